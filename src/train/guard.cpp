// defines: NonFiniteGuard, stop-signal flag
#include "train/guard.h"

#include <csignal>
#include <cmath>

namespace idamoe::train {

NonFiniteGuard::Verdict NonFiniteGuard::observe(double loss, double grad_norm) {
    if (std::isfinite(loss) && std::isfinite(grad_norm)) {
        in_row_ = 0;
        return Verdict::ok;
    }
    ++in_row_;
    ++total_;
    return in_row_ > max_in_row_ ? Verdict::stop : Verdict::skip;
}

std::string NonFiniteGuard::stop_message(int64_t step) const {
    return "stopping at step " + std::to_string(step) + ": " + std::to_string(in_row_) +
           " optimizer steps in a row had a non-finite loss or gradient (train.max_nonfinite_in_row = " +
           std::to_string(max_in_row_) + "); the last checkpoint is intact. Try a lower train.lr, "
           "train.grad_clip > 0, or model.dtype=float32";
}

namespace {
volatile std::sig_atomic_t g_stop = 0;
volatile std::sig_atomic_t g_signal = 0;
extern "C" void on_stop_signal(int sig) {
    g_stop = 1;
    g_signal = sig;
}
}  // namespace

void install_stop_handlers() {
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
}
bool stop_requested() { return g_stop != 0; }
int stop_signal() { return static_cast<int>(g_signal); }
void request_stop() { g_stop = 1; }
void clear_stop() {
    g_stop = 0;
    g_signal = 0;
}

}  // namespace idamoe::train
