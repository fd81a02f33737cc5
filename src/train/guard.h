// defines: NonFiniteGuard, StopSignal (install_stop_handlers, stop_requested, request_stop, clear_stop)
//
// Two run-control pieces the training loop consults once per optimizer step:
// - NonFiniteGuard: a non-finite loss or gradient norm skips that step (no parameter or optimizer change);
//   more than max_in_row consecutive skips stop the run, leaving the last checkpoint intact.
// - Stop signals: SIGTERM/SIGINT set a flag; the loop checkpoints and exits at the next step boundary.
#pragma once

#include <cstdint>
#include <string>

namespace idamoe::train {

class NonFiniteGuard {
public:
    enum class Verdict { ok, skip, stop };
    explicit NonFiniteGuard(int64_t max_in_row) : max_in_row_(max_in_row) {}

    // Call once per optimizer step with the accumulated loss and the global gradient norm.
    Verdict observe(double loss, double grad_norm);

    int64_t in_row() const { return in_row_; }
    int64_t total_skipped() const { return total_; }
    void restore(int64_t in_row, int64_t total) { in_row_ = in_row; total_ = total; }
    // Message for the stop verdict (what happened and what to try).
    std::string stop_message(int64_t step) const;

private:
    int64_t max_in_row_;
    int64_t in_row_ = 0;
    int64_t total_ = 0;
};

void install_stop_handlers();  // SIGTERM and SIGINT -> request a stop at the next step boundary
bool stop_requested();
int stop_signal();             // the signal number that requested the stop, 0 if requested by code
void request_stop();           // the same as receiving a signal (tests, stop_after)
void clear_stop();

}  // namespace idamoe::train
