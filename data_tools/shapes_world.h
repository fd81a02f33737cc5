// defines: Rng, Shape, Scene, sample_scene, render_scene, caption_of, QA, ask, conversation, text_only_qa,
//          kColours, kShapeNames, kCategories
//
// The built-in demo's synthetic world: 1-3 flat shapes (circle, square, triangle, cross) in six
// colours and three sizes on a tinted, gradient, noisy background, plus the language that talks
// about it (captions, single-word-answer questions, text-only questions). Everything here is a
// pure function of a 64-bit seed, with integer/float arithmetic only (no <random> distributions,
// whose output differs between standard libraries), so a seed gives the same bytes everywhere.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace idamoe::demo {

// ---- random numbers ------------------------------------------------------------------------

// splitmix64 (Steele, Lea, Flood 2014): tiny, full-period, and fully specified.
struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed) {}
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
    double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
    int64_t below(int64_t n) { return static_cast<int64_t>(uniform() * static_cast<double>(n)); }  // [0, n)
    bool coin(double p = 0.5) { return uniform() < p; }
    template <class T> const T & pick(const std::vector<T> & v) { return v[static_cast<size_t>(below(static_cast<int64_t>(v.size())))]; }
};

// An independent stream per (seed, split, index): image i does not depend on the split's size.
inline uint64_t stream_seed(uint64_t seed, uint64_t split, uint64_t index) {
    Rng r(seed * 0x100000001B3ull ^ (split << 48) ^ index);
    r.next();
    return r.next();
}

// ---- the world ---------------------------------------------------------------------------

struct Colour {
    const char * name;
    int r, g, b;
};
// Saturated colours far from the low-saturation backgrounds below.
inline const std::vector<Colour> kColours = {
    {"red", 220, 40, 40},     {"green", 40, 170, 60},  {"blue", 40, 80, 225},
    {"yellow", 240, 210, 40}, {"purple", 145, 55, 185}, {"orange", 245, 135, 25},
};
enum class Kind { circle, square, triangle, cross };
inline const std::vector<std::string> kShapeNames = {"circle", "square", "triangle", "cross"};
inline const std::vector<std::string> kShapePlurals = {"circles", "squares", "triangles", "crosses"};
inline const std::vector<std::string> kSizeNames = {"small", "medium", "large"};
// Radius ranges per size class, as fractions of the image side.
inline const std::array<std::array<double, 2>, 3> kRadius = {{{0.09, 0.12}, {0.14, 0.17}, {0.20, 0.24}}};

// Question categories, in the order the eval split cycles through them.
inline const std::vector<std::string> kCategories = {"colour", "shape", "count", "presence", "position", "largest"};

struct Shape {
    int kind;     // index into kShapeNames
    int colour;   // index into kColours
    int size;     // index into kSizeNames
    double cx, cy, r;  // pixels
};

struct Scene {
    int size = 56;
    int grid = 0;                // > 0: shapes sit one per cell of a grid x grid layout (see sample_scene)
    std::vector<Shape> shapes;
    std::array<int, 3> bg{};     // base colour
    std::array<double, 2> grad{};// per-pixel brightness slope (x, y)
    bool stripes = false;
    double noise = 6.0;
};

// Grid layouts: the (column, row) of the cell a shape's centre lies in.
inline std::array<int, 2> grid_cell(const Scene & s, const Shape & sh) {
    const double cell = static_cast<double>(s.size) / s.grid;
    return {static_cast<int>(sh.cx / cell), static_cast<int>(sh.cy / cell)};
}

// Radius ranges per size class in grid layouts, as fractions of the cell side: the largest still fits
// its cell with half a pixel to spare; small vs large differ by 1.8-2.5x in radius squared. Narrower than
// the free layout's classes, so by painted area "which is largest" would lean on the kind (a circle
// paints the most area for its radius); in grid layouts ask() compares size classes instead.
inline const std::array<std::array<double, 2>, 3> kGridRadius = {{{0.29, 0.32}, {0.36, 0.39}, {0.43, 0.46}}};

// 1-3 non-overlapping shapes with distinct (kind, colour) pairs, so "the red circle" is unambiguous.
// grid == 0: anywhere in the image. grid = G > 0: each shape in its own cell of a G x G grid, centred
// up to a pixel or two off the cell centre. With G = image side / patch side (the demo: 56 / 14) every
// shape lies inside one vision patch, so one image token carries one object; a random, frozen tower
// then keeps each object's colour and outline in one token instead of smearing it over four.
// one_shape_p >= 0 (with min_shapes 1): P(one shape) = one_shape_p, two and three shapes share the rest
// equally; < 0: 1-3 shapes uniformly.
inline Scene sample_scene(Rng & rng, int image_size, int min_shapes = 1, int grid = 0, double one_shape_p = -1.0) {
    Scene s;
    s.size = image_size;
    s.grid = grid;
    int grey = static_cast<int>(rng.uniform(70, 205));
    for (int c = 0; c < 3; ++c) s.bg[c] = std::clamp(grey + static_cast<int>(rng.uniform(-14, 14)), 0, 255);
    s.grad = {rng.uniform(-0.5, 0.5) * 56.0 / image_size, rng.uniform(-0.5, 0.5) * 56.0 / image_size};
    s.stripes = rng.coin(0.25);
    s.noise = rng.uniform(2.0, 8.0);
    int n;
    if (one_shape_p >= 0 && min_shapes == 1) {
        const double u = rng.uniform();
        n = u < one_shape_p ? 1 : u < one_shape_p + (1 - one_shape_p) / 2 ? 2 : 3;
    } else {
        n = static_cast<int>(min_shapes + rng.below(3 - min_shapes + 1));
    }
    const double side = image_size;
    for (int i = 0; i < n; ++i) {
        for (int attempt = 0; attempt < 200; ++attempt) {
            Shape sh;
            sh.kind = static_cast<int>(rng.below(4));
            sh.colour = static_cast<int>(rng.below(static_cast<int64_t>(kColours.size())));
            // Later attempts prefer smaller shapes so that three shapes always fit.
            sh.size = static_cast<int>(rng.below(attempt < 100 || grid > 0 ? 3 : 1));
            if (grid > 0) {
                const double cell = side / grid;
                const int gx = static_cast<int>(rng.below(grid)), gy = static_cast<int>(rng.below(grid));
                sh.r = cell * rng.uniform(kGridRadius[sh.size][0], kGridRadius[sh.size][1]);
                const double slack = std::max(0.0, cell / 2 - sh.r - 0.5);
                sh.cx = (gx + 0.5) * cell + rng.uniform(-slack, slack);
                sh.cy = (gy + 0.5) * cell + rng.uniform(-slack, slack);
            } else {
                sh.r = side * rng.uniform(kRadius[sh.size][0], kRadius[sh.size][1]);
                sh.cx = rng.uniform(sh.r + 1, side - sh.r - 1);
                sh.cy = rng.uniform(sh.r + 1, side - sh.r - 1);
            }
            bool ok = true;
            for (const auto & o : s.shapes) {
                if (o.kind == sh.kind && o.colour == sh.colour) ok = false;
                if (grid > 0 ? grid_cell(s, o) == grid_cell(s, sh) : std::hypot(o.cx - sh.cx, o.cy - sh.cy) < o.r + sh.r + 2.0) ok = false;
            }
            if (ok) {
                s.shapes.push_back(sh);
                break;
            }
        }
    }
    return s;
}

// Every shape fits inside the circle of radius r around its centre (placement relies on it).
inline bool inside(const Shape & sh, double x, double y) {
    const double dx = x - sh.cx, dy = y - sh.cy, r = sh.r;
    switch (static_cast<Kind>(sh.kind)) {
        case Kind::circle: return dx * dx + dy * dy <= r * r;
        case Kind::square: return std::abs(dx) <= 0.7 * r && std::abs(dy) <= 0.7 * r;
        case Kind::triangle: {
            // Equilateral, inscribed: apex (0, -r), base at y = r/2 with half-width r*sqrt(3)/2.
            if (dy < -r || dy > 0.5 * r) return false;
            return std::abs(dx) <= (dy + r) / (1.5 * r) * (0.8660254037844386 * r);
        }
        case Kind::cross: {
            const double arm = 0.3 * r, len = 0.95 * r;
            return (std::abs(dx) <= arm && std::abs(dy) <= len) || (std::abs(dy) <= arm && std::abs(dx) <= len);
        }
    }
    return false;
}

// Painted area in r^2 units (for "which shape is largest", which compares what the eye sees).
inline double area(const Shape & sh) {
    static const double unit[4] = {3.14159265358979, 1.96, 1.299038105676658, 4 * 0.3 * 0.95 * 2 - 0.36};
    return unit[sh.kind] * sh.r * sh.r;
}

// RGB bytes, row-major, 4x4 supersampled edges.
inline std::vector<uint8_t> render_scene(const Scene & s, Rng & rng) {
    const int n = s.size;
    std::vector<uint8_t> px(static_cast<size_t>(n) * n * 3);
    for (int y = 0; y < n; ++y) {
        for (int x = 0; x < n; ++x) {
            double acc[3] = {0, 0, 0};
            double shade = s.grad[0] * (x - n / 2.0) + s.grad[1] * (y - n / 2.0);
            if (s.stripes && ((x + y) / 4) % 2 == 0) shade += 12.0;
            for (int sy = 0; sy < 4; ++sy) {
                for (int sx = 0; sx < 4; ++sx) {
                    const double fx = x + (sx + 0.5) / 4.0, fy = y + (sy + 0.5) / 4.0;
                    double c[3] = {s.bg[0] + shade, s.bg[1] + shade, s.bg[2] + shade};
                    for (const auto & sh : s.shapes) {  // later shapes paint over earlier ones
                        if (inside(sh, fx, fy)) {
                            const auto & col = kColours[sh.colour];
                            c[0] = col.r; c[1] = col.g; c[2] = col.b;
                        }
                    }
                    for (int k = 0; k < 3; ++k) acc[k] += c[k];
                }
            }
            for (int k = 0; k < 3; ++k) {
                const double v = acc[k] / 16.0 + rng.uniform(-s.noise, s.noise);
                px[(static_cast<size_t>(y) * n + x) * 3 + k] = static_cast<uint8_t>(std::clamp(std::lround(v), 0l, 255l));
            }
        }
    }
    return px;
}

// ---- language --------------------------------------------------------------------------

inline std::string name_of(const Shape & sh) { return std::string(kColours[sh.colour].name) + " " + kShapeNames[sh.kind]; }
inline std::string a_or_an(const std::string & w) { return (w[0] == 'o' || w[0] == 'a' ? "an " : "a ") + w; }

// Horizontal position word; "middle" within 12% of the centre line, or in the middle column of an odd grid.
inline std::string horizontal(const Scene & s, const Shape & sh) {
    if (s.grid > 0) {
        const int col = grid_cell(s, sh)[0];
        return 2 * col + 1 == s.grid ? "middle" : 2 * col < s.grid ? "left" : "right";
    }
    const double off = (sh.cx - s.size / 2.0) / s.size;
    return off < -0.12 ? "left" : off > 0.12 ? "right" : "middle";
}

inline std::string caption_of(const Scene & s, Rng & rng) {
    static const std::vector<std::string> counts = {"no shapes", "one shape", "two shapes", "three shapes"};
    const int grey = (s.bg[0] + s.bg[1] + s.bg[2]) / 3;
    std::string bg = std::string(grey < 120 ? "a dark" : grey > 160 ? "a light" : "a gray") +
                     (s.stripes ? " striped background" : " background");
    std::vector<std::string> parts;
    for (const auto & sh : s.shapes) {
        std::string where = horizontal(s, sh);
        parts.push_back("a " + kSizeNames[sh.size] + " " + name_of(sh) + (where == "middle" ? " in the middle" : " on the " + where));
    }
    std::string list;
    for (size_t i = 0; i < parts.size(); ++i)
        list += (i == 0 ? "" : i + 1 == parts.size() ? " and " : ", ") + parts[i];
    switch (rng.below(3)) {
        case 0: return counts[s.shapes.size()] + " on " + bg + ": " + list + ".";
        case 1: return "an image of " + list + " on " + bg + ".";
        default: return list + ". " + counts[s.shapes.size()] + " in total.";
    }
}

struct QA {
    std::string category, question, answer;
};

// A question of `category` about scene s, or nullopt when the scene cannot support it
// (e.g. "which shape is largest" needs two shapes and a clear winner). `said` is the conversation so
// far (earlier turns' questions and answers): a presence question never names a shape or colour said
// there. Earlier turns only name what the image holds, so a later "Is there a circle?" after "How many
// circles ...?" was "yes" 95% of the time: in the demo's data, 1409 of 1484 later-turn presence questions
// naming a said attribute. The decoder learned that text shortcut, answered "yes" to ~80% of the held-out
// (single-turn) presence questions and stayed at chance on them (docs/demo_notes.md).
inline std::optional<QA> ask(const Scene & s, const std::string & category, Rng & rng, const std::string & said = "") {
    const auto & sh = s.shapes;
    if (sh.empty()) return std::nullopt;
    auto count_kind = [&](int k) { return std::count_if(sh.begin(), sh.end(), [&](const Shape & x) { return x.kind == k; }); };
    auto count_colour = [&](int c) { return std::count_if(sh.begin(), sh.end(), [&](const Shape & x) { return x.colour == c; }); };
    // An object whose shape and colour were both said (a "What shape is the red object?" answered
    // "circle") is not asked about again: "What colour is the circle?" would be answered by the text.
    auto mentioned = [&](const std::string & word) { return said.find(word) != std::string::npos; };  // "circles" too
    auto told = [&](const Shape & x) { return mentioned(kShapeNames[x.kind]) && mentioned(kColours[x.colour].name); };
    if (category == "colour") {
        std::vector<Shape> unique;
        for (const auto & x : sh) if (count_kind(x.kind) == 1 && !told(x)) unique.push_back(x);
        if (unique.empty()) return std::nullopt;
        const Shape & t = rng.pick(unique);
        return QA{category, "What colour is the " + kShapeNames[t.kind] + "?", kColours[t.colour].name};
    }
    if (category == "shape") {
        std::vector<Shape> unique;
        for (const auto & x : sh) if (count_colour(x.colour) == 1 && !told(x)) unique.push_back(x);
        if (unique.empty()) return std::nullopt;
        const Shape & t = rng.pick(unique);
        return QA{category, "What shape is the " + std::string(kColours[t.colour].name) + " object?", kShapeNames[t.kind]};
    }
    if (category == "count") {
        if (rng.coin()) return QA{category, "How many shapes are there?", std::to_string(sh.size())};
        const int k = static_cast<int>(rng.below(4));
        return QA{category, "How many " + kShapePlurals[k] + " are there?", std::to_string(count_kind(k))};
    }
    // Presence and position name one attribute, as the colour and shape questions do ("the circle", "the red
    // object"), so that every type asks the same kind of lookup. The conjunctive versions ("Is there a red
    // circle?", "Is the green triangle on the left ...?") were harder still for a decoder that, within the
    // demo's few minutes, does not yet pick out even a singly named object (docs/demo_notes.md).
    if (category == "presence") {  // "Is there a circle?" / "Is there a red object?", yes or no by coin
        const bool by_kind = rng.coin();
        const int n_values = static_cast<int>(by_kind ? kShapeNames.size() : kColours.size());
        std::array<std::vector<int>, 2> pool;  // [no, yes]: the unsaid kinds (colours) absent / present
        for (int v = 0; v < n_values; ++v) {
            if (mentioned(by_kind ? kShapeNames[v] : std::string(kColours[v].name))) continue;
            pool[(by_kind ? count_kind(v) : count_colour(v)) > 0].push_back(v);
        }
        // Both answers must be possible before the coin decides: skipping only when the drawn answer's pool
        // was empty made later turns "no" 87% of the time on one-object images (the object's attributes are
        // usually said by then), and the decoder answered from the conversation and the object count.
        if (pool[0].empty() || pool[1].empty()) return std::nullopt;
        const bool yes = rng.coin();
        const int v = rng.pick(pool[yes]);
        return QA{category, "Is there " + a_or_an(by_kind ? kShapeNames[v] : std::string(kColours[v].name) + " object") + "?",
                  yes ? "yes" : "no"};
    }
    if (category == "position") {
        std::vector<std::string> refs, sides;  // sided shapes that one attribute names uniquely
        for (const auto & x : sh) {
            const std::string side = horizontal(s, x);
            if (side == "middle") continue;
            if (count_kind(x.kind) == 1) refs.push_back("the " + kShapeNames[x.kind]), sides.push_back(side);
            if (count_colour(x.colour) == 1) refs.push_back("the " + std::string(kColours[x.colour].name) + " object"), sides.push_back(side);
        }
        if (refs.empty()) return std::nullopt;
        const size_t i = static_cast<size_t>(rng.below(static_cast<int64_t>(refs.size())));
        // Not "Is the circle on the left or on the right?": with both answers in the question, copying one
        // of them competes with reading the object's column, and on the demo's data stage 2 read the side
        // of a lone object (68-69/69) in 1 of 4 seeds; with this wording in 4 of 4 (docs/demo_notes.md).
        return QA{category, "Which side is " + refs[i] + " on?", sides[i]};
    }
    if (category == "largest") {
        if (sh.size() < 2) return std::nullopt;
        if (s.grid > 0) {
            // Grid layouts: by size class (the captions' small/medium/large), one shape strictly above the
            // rest. By painted area a circle would win most questions here (see kGridRadius).
            std::vector<Shape> by = sh;
            std::sort(by.begin(), by.end(), [](const Shape & a, const Shape & b) { return a.size > b.size; });
            if (by[0].size == by[1].size) return std::nullopt;
            return QA{category, "Which shape is the largest?", kShapeNames[by[0].kind]};
        }
        std::vector<Shape> by = sh;
        std::sort(by.begin(), by.end(), [](const Shape & a, const Shape & b) { return area(a) > area(b); });
        if (area(by[0]) < 1.6 * area(by[1])) return std::nullopt;  // no visually clear winner
        return QA{category, "Which shape is the largest?", kShapeNames[by[0].kind]};
    }
    return std::nullopt;
}

// One instruction record's QA turns: the categories in random order, each asked at most once, until
// 1..max_turns turns (drawn) are filled; every question sees the turns before it (ask()'s `said`).
inline std::vector<QA> conversation(const Scene & s, Rng & rng, int max_turns) {
    std::vector<std::string> cats = kCategories;
    for (size_t k = cats.size(); k > 1; --k) std::swap(cats[k - 1], cats[static_cast<size_t>(rng.below(static_cast<int64_t>(k)))]);
    const size_t turns = 1 + static_cast<size_t>(rng.below(max_turns));
    std::vector<QA> out;
    std::string said;
    for (const auto & cat : cats) {
        if (out.size() >= turns) break;
        auto qa = ask(s, cat, rng, said);
        if (!qa) continue;
        said += qa->question + " " + qa->answer + "\n";
        out.push_back(*qa);
    }
    return out;
}

// Text-only instruction data (the role of MoE-LLaVA's nlp_tune.json), with single-word answers.
inline QA text_only_qa(Rng & rng) {
    static const std::vector<std::string> digits = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
    switch (rng.below(5)) {
        case 0: {
            int a = static_cast<int>(rng.below(5)), b = static_cast<int>(rng.below(5));
            return QA{"text", "What is " + digits[a] + " plus " + digits[b] + "?", std::to_string(a + b)};
        }
        case 1: {
            int a = static_cast<int>(rng.below(10)), b = static_cast<int>(rng.below(a + 1));
            return QA{"text", "What is " + digits[a] + " minus " + digits[b] + "?", std::to_string(a - b)};
        }
        case 2: {
            int a = static_cast<int>(rng.below(10)), b = static_cast<int>(rng.below(9));
            if (b >= a) ++b;
            return QA{"text", "Which number is larger, " + digits[a] + " or " + digits[b] + "?", digits[std::max(a, b)]};
        }
        case 3: {
            static const std::vector<std::array<std::string, 3>> mixes = {
                {"red", "yellow", "orange"}, {"blue", "yellow", "green"}, {"red", "blue", "purple"}};
            const auto & m = mixes[static_cast<size_t>(rng.below(3))];
            bool swap = rng.coin();
            return QA{"text", "What colour do you get when you mix " + m[swap ? 1 : 0] + " and " + m[swap ? 0 : 1] + "?", m[2]};
        }
        default: {
            static const std::vector<std::array<std::string, 2>> sides = {{"triangle", "3"}, {"square", "4"}};
            const auto & s = sides[static_cast<size_t>(rng.below(2))];
            return QA{"text", "How many corners does a " + s[0] + " have?", s[1]};
        }
    }
}

}  // namespace idamoe::demo
