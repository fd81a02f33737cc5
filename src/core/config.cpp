// The one place YAML is parsed. Flow: load the file and its base: chain into one merged tree
// (remembering which file and line set every key), apply --set overrides, bind the tree into the
// typed structs (unknown keys and wrong types are errors), then validate ranges.
#include "core/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

namespace fs = std::filesystem;

namespace idamoe::core {
namespace {

struct Origin {
    std::string file;  // file that set the key, or "--set"
    int line = 0;      // 1-based; 0 = unknown
    std::string dir;   // relative paths resolve against this
};
using Origins = std::map<std::string, Origin>;

std::string join_key(const std::string & prefix, const std::string & key) {
    return prefix.empty() ? key : prefix + "." + key;
}

std::string where(const Origins & origins, const std::string & key, const std::string & fallback_file) {
    // Walk up the dotted path until some level has a recorded origin.
    std::string k = key;
    while (true) {
        auto it = origins.find(k);
        if (it != origins.end()) {
            if (it->second.line > 0) return it->second.file + ":" + std::to_string(it->second.line);
            return it->second.file;
        }
        auto dot = k.rfind('.');
        if (dot == std::string::npos) break;
        k = k.substr(0, dot);
    }
    return fallback_file;
}

[[noreturn]] void fail(const std::string & at, const std::string & key, const std::string & msg) {
    throw ConfigError(at + ": " + key + ": " + msg);
}

size_t edit_distance(const std::string & a, const std::string & b) {
    std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        cur[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            size_t sub = prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
            cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
        }
        std::swap(prev, cur);
    }
    return prev[b.size()];
}

std::string closest(const std::string & key, const std::vector<std::string> & known) {
    std::string best;
    size_t best_d = SIZE_MAX;
    for (const auto & k : known) {
        size_t d = edit_distance(key, k);
        if (d < best_d) { best_d = d; best = k; }
    }
    return best;
}

// ---- loading and merging ------------------------------------------------------------------

void record_origins(const YAML::Node & node, const std::string & path, const std::string & file,
                    const std::string & dir, Origins & origins) {
    origins[path] = Origin{file, node.Mark().line >= 0 ? node.Mark().line + 1 : 0, dir};
    if (node.IsMap()) {
        for (auto it = node.begin(); it != node.end(); ++it) {
            std::string k = it->first.as<std::string>();
            Origin o{file, it->first.Mark().line >= 0 ? it->first.Mark().line + 1 : 0, dir};
            record_origins(it->second, join_key(path, k), file, dir, origins);
            origins[join_key(path, k)].line = o.line;  // the key's line reads better than the value's
        }
    }
}

void erase_origins_under(Origins & origins, const std::string & path) {
    for (auto it = origins.begin(); it != origins.end();) {
        if (it->first == path || it->first.rfind(path + ".", 0) == 0) it = origins.erase(it);
        else ++it;
    }
}

// Overlay src onto dst: maps merge key by key, everything else replaces.
void merge_into(YAML::Node dst, const YAML::Node & src, const std::string & path, const std::string & file,
                const std::string & dir, Origins & origins) {
    for (auto it = src.begin(); it != src.end(); ++it) {
        std::string k = it->first.as<std::string>();
        std::string kp = join_key(path, k);
        if (path.empty() && k == "base") continue;
        YAML::Node sv = it->second;
        if (sv.IsMap() && dst[k] && dst[k].IsMap()) {
            YAML::Node child = dst[k];
            merge_into(child, sv, kp, file, dir, origins);
            origins[kp] = Origin{file, it->first.Mark().line + 1, dir};
        } else {
            erase_origins_under(origins, kp);
            dst[k] = YAML::Clone(sv);
            record_origins(sv, kp, file, dir, origins);
            origins[kp].line = it->first.Mark().line + 1;
        }
    }
}

YAML::Node parse_yaml_text(const std::string & text, const std::string & name) {
    try {
        YAML::Node n = YAML::Load(text);
        if (n.IsNull()) return YAML::Node(YAML::NodeType::Map);
        if (!n.IsMap()) throw ConfigError(name + ": the top level must be a mapping of sections (model:, train:, ...)");
        return n;
    } catch (const YAML::Exception & e) {
        throw ConfigError(name + ":" + std::to_string(e.mark.line + 1) + ": YAML syntax error: " + e.msg);
    }
}

std::string read_file(const std::string & path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw ConfigError(path + ": cannot read config file (" + std::strerror(errno) + ")");
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void load_chain(const YAML::Node & doc, const std::string & name, const std::string & dir,
                std::vector<std::string> & stack, YAML::Node & merged, Origins & origins);

void load_file_chain(const std::string & file, std::vector<std::string> & stack, YAML::Node & merged,
                     Origins & origins) {
    std::error_code ec;
    fs::path canon = fs::weakly_canonical(fs::absolute(file), ec);
    std::string key = canon.string();
    if (std::find(stack.begin(), stack.end(), key) != stack.end()) {
        std::string chain;
        for (const auto & s : stack) chain += s + " -> ";
        throw ConfigError(file + ": base: cycle: " + chain + key);
    }
    if (!fs::exists(canon)) throw ConfigError(file + ": config file does not exist");
    YAML::Node doc = parse_yaml_text(read_file(canon.string()), file);
    stack.push_back(key);
    load_chain(doc, file, canon.parent_path().string(), stack, merged, origins);
    stack.pop_back();
}

void load_chain(const YAML::Node & doc, const std::string & name, const std::string & dir,
                std::vector<std::string> & stack, YAML::Node & merged, Origins & origins) {
    if (doc["base"]) {
        const YAML::Node & b = doc["base"];
        if (!b.IsScalar())
            throw ConfigError(name + ":" + std::to_string(b.Mark().line + 1) + ": base: expected a file path string");
        fs::path bp = b.as<std::string>();
        if (bp.is_relative()) bp = fs::path(dir) / bp;
        if (!fs::exists(bp))
            throw ConfigError(name + ":" + std::to_string(b.Mark().line + 1) + ": base: file " + bp.string() +
                              " does not exist");
        load_file_chain(bp.string(), stack, merged, origins);
    }
    merge_into(merged, doc, "", name, dir, origins);
}

void apply_override(const std::string & ov, YAML::Node & merged, Origins & origins) {
    auto eq = ov.find('=');
    if (eq == std::string::npos || eq == 0)
        throw ConfigError("--set " + ov + ": expected key.path=value");
    std::string key = ov.substr(0, eq);
    std::string value = ov.substr(eq + 1);
    YAML::Node v;
    try {
        v = YAML::Load(value);
    } catch (const YAML::Exception & e) {
        throw ConfigError("--set " + ov + ": value is not valid YAML: " + e.msg);
    }
    if (v.IsNull() && value.empty()) v = YAML::Node(std::string());
    std::vector<std::string> parts;
    std::stringstream ss(key);
    for (std::string p; std::getline(ss, p, '.');) {
        if (p.empty()) throw ConfigError("--set " + ov + ": empty component in key path");
        parts.push_back(p);
    }
    YAML::Node cur = merged;
    std::string path;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
        path = join_key(path, parts[i]);
        if (!cur[parts[i]] || !cur[parts[i]].IsMap()) cur[parts[i]] = YAML::Node(YAML::NodeType::Map);
        cur.reset(cur[parts[i]]);
        if (!origins.count(path)) origins[path] = Origin{"--set " + ov, 0, fs::current_path().string()};
    }
    cur[parts.back()] = v;
    erase_origins_under(origins, key);
    origins[key] = Origin{"--set " + ov, 0, fs::current_path().string()};
}

// ---- environment variables and paths -----------------------------------------------------

std::string expand_env(const std::string & s, const std::string & at, const std::string & key) {
    std::string out;
    size_t i = 0;
    while (i < s.size()) {
        if (s[i] == '$' && i + 1 < s.size() && s[i + 1] == '{') {
            size_t end = s.find('}', i + 2);
            if (end == std::string::npos) fail(at, key, "unterminated ${...} in '" + s + "'");
            std::string body = s.substr(i + 2, end - i - 2);
            std::string name = body, def;
            bool has_def = false;
            auto d = body.find(":-");
            if (d != std::string::npos) { name = body.substr(0, d); def = body.substr(d + 2); has_def = true; }
            if (name.empty()) fail(at, key, "empty variable name in '" + s + "'");
            const char * val = std::getenv(name.c_str());
            if (val && *val) out += val;
            else if (has_def) out += def;
            else fail(at, key, "environment variable " + name + " is not set (write ${" + name + ":-default} to give a default)");
            i = end + 1;
        } else {
            out += s[i++];
        }
    }
    return out;
}

// ---- binding: one visitor reads, another writes --------------------------------------------

struct Reader {
    YAML::Node node;          // the section's map (may be undefined)
    std::string prefix;       // dotted path of the section
    const Origins & origins;
    const std::string & top_file;
    std::string top_dir;
    std::vector<std::string> known;

    std::string at(const std::string & key) const { return where(origins, key, top_file); }

    // Missing keys come back as an undefined node (operator! is true); never inserts.
    YAML::Node get(const char * key) {
        known.push_back(key);
        static const YAML::Node kEmptyMap(YAML::NodeType::Map);
        const YAML::Node & cn = (node && node.IsMap()) ? node : kEmptyMap;
        return cn[key];
    }

    static std::string show(const YAML::Node & n) {
        if (n.IsScalar()) return "'" + n.Scalar() + "'";
        if (n.IsSequence()) return "a list";
        if (n.IsMap()) return "a mapping";
        return "null";
    }

    std::string scalar(const YAML::Node & n, const std::string & k, const char * expected) {
        if (!n.IsScalar()) fail(at(k), k, std::string("expected ") + expected + ", got " + show(n));
        return n.Scalar();
    }

    void field(const char * key, int64_t & v) {
        YAML::Node n = get(key);
        if (!n) return;
        std::string k = join_key(prefix, key);
        std::string s = scalar(n, k, "an integer");
        errno = 0;
        char * end = nullptr;
        long long x = std::strtoll(s.c_str(), &end, 10);
        if (s.empty() || *end != '\0' || errno == ERANGE) fail(at(k), k, "expected an integer, got '" + s + "'");
        v = x;
    }
    void field(const char * key, double & v) {
        YAML::Node n = get(key);
        if (!n) return;
        std::string k = join_key(prefix, key);
        std::string s = scalar(n, k, "a number");
        errno = 0;
        char * end = nullptr;
        double x = std::strtod(s.c_str(), &end);
        if (s.empty() || *end != '\0' || errno == ERANGE) fail(at(k), k, "expected a number, got '" + s + "'");
        v = x;
    }
    void field(const char * key, bool & v) {
        YAML::Node n = get(key);
        if (!n) return;
        std::string k = join_key(prefix, key);
        std::string s = scalar(n, k, "true or false");
        std::string l = s;
        std::transform(l.begin(), l.end(), l.begin(), ::tolower);
        if (l == "true" || l == "yes" || l == "on") v = true;
        else if (l == "false" || l == "no" || l == "off") v = false;
        else fail(at(k), k, "expected true or false, got '" + s + "'");
    }
    void field(const char * key, std::string & v) {
        YAML::Node n = get(key);
        if (!n) return;
        std::string k = join_key(prefix, key);
        if (n.IsNull()) { v.clear(); return; }
        v = expand_env(scalar(n, k, "a string"), at(k), k);
    }
    void path(const char * key, std::string & v) {
        YAML::Node n = get(key);
        if (!n) {
            // A default relative path resolves against the top-level config's folder, like any other.
            if (!v.empty() && fs::path(v).is_relative() && !top_dir.empty())
                v = (fs::path(top_dir) / v).lexically_normal().string();
            return;
        }
        std::string k = join_key(prefix, key);
        if (n.IsNull()) { v.clear(); return; }
        v = resolve_path(expand_env(scalar(n, k, "a path string"), at(k), k), k);
    }
    std::string resolve_path(const std::string & p, const std::string & k) const {
        if (p.empty() || fs::path(p).is_absolute()) return p;
        std::string dir;
        auto it = origins.find(k);
        if (it != origins.end()) dir = it->second.dir;
        if (dir.empty()) return p;
        return (fs::path(dir) / p).lexically_normal().string();
    }
    void field(const char * key, std::vector<std::string> & v) {
        YAML::Node n = get(key);
        if (!n) return;
        std::string k = join_key(prefix, key);
        if (n.IsNull()) { v.clear(); return; }
        if (!n.IsSequence()) fail(at(k), k, "expected a list of strings, got " + show(n));
        v.clear();
        for (size_t i = 0; i < n.size(); ++i)
            v.push_back(expand_env(scalar(n[i], k + "[" + std::to_string(i) + "]", "a string"), at(k), k));
    }
    // moe.layers: every_other | all | [0, 2, 5] | "0,2,5"
    void layers(const char * key, std::string & v) {
        YAML::Node n = get(key);
        if (!n) return;
        std::string k = join_key(prefix, key);
        if (n.IsSequence()) {
            std::string s;
            for (size_t i = 0; i < n.size(); ++i) {
                std::string e = scalar(n[i], k, "a list of layer indices");
                char * end = nullptr;
                long long x = std::strtoll(e.c_str(), &end, 10);
                if (e.empty() || *end != '\0' || x < 0) fail(at(k), k, "expected non-negative layer indices, got '" + e + "'");
                s += (i ? "," : "") + std::to_string(x);
            }
            if (s.empty()) fail(at(k), k, "expected at least one layer index");
            v = s;
            return;
        }
        std::string s = scalar(n, k, "every_other, all, or a list of layer indices");
        try {
            resolve_moe_layers(s, 1 << 20);
        } catch (const std::exception & e) {
            fail(at(k), k, e.what());
        }
        v = s;
    }
    // A list of mappings (data.train, data.curriculum): entry i is read under "key[i]" by visit(sub, entry), its
    // `fields` resolving paths against the file that set the list; then check(entry, "key[i]") (after the
    // unknown-key check, so a misspelt key is named as such, not as a missing one).
    template <class T, class Visit, class Check>
    void entries(const char * key, std::vector<T> & v, const std::vector<std::string> & fields, const std::string & list_of,
                 const std::string & mapping_with, Visit visit, Check check) {
        YAML::Node n = get(key);
        if (!n) return;
        std::string k = join_key(prefix, key);
        if (n.IsNull()) { v.clear(); return; }
        if (!n.IsSequence()) fail(at(k), k, "expected a list of " + list_of + " entries, got " + show(n));
        v.clear();
        for (size_t i = 0; i < n.size(); ++i) {
            std::string ek = k + "[" + std::to_string(i) + "]";
            if (!n[i].IsMap()) fail(at(k), ek, "expected a mapping with " + mapping_with + ", got " + show(n[i]));
            Origins local = origins;
            for (const auto & f : fields) local[ek + "." + f] = origins.count(k) ? origins.at(k) : Origin{};
            Reader sub{n[i], ek, local, top_file, top_dir, {}};
            T e;
            visit(sub, e);
            sub.finish();
            check(e, ek);
            v.push_back(e);
        }
    }
    void datasets(const char * key, std::vector<DatasetEntry> & v);
    void phases(const char * key, std::vector<CurriculumPhase> & v);
    template <class S> void section(const char * key, S & s);
    void finish() {
        if (!node || !node.IsMap()) return;
        for (auto it = node.begin(); it != node.end(); ++it) {
            std::string k = it->first.as<std::string>();
            if (prefix.empty() && k == "base") continue;
            if (std::find(known.begin(), known.end(), k) == known.end()) {
                std::string full = join_key(prefix, k);
                fail(at(full), full, "unknown key (did you mean '" + join_key(prefix, closest(k, known)) + "'?)");
            }
        }
    }
};

struct Writer {
    YAML::Emitter & out;
    void field(const char * key, const int64_t & v) { out << YAML::Key << key << YAML::Value << v; }
    void field(const char * key, const double & v) {
        std::ostringstream ss;
        ss.precision(17);
        ss << v;
        std::string s = ss.str();
        if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
        out << YAML::Key << key << YAML::Value << s;
    }
    void field(const char * key, const bool & v) { out << YAML::Key << key << YAML::Value << (v ? "true" : "false"); }
    void field(const char * key, const std::string & v) {
        out << YAML::Key << key << YAML::Value << YAML::DoubleQuoted << v;
    }
    void path(const char * key, const std::string & v) { field(key, v); }
    void layers(const char * key, const std::string & v) {
        if (!v.empty() && std::isdigit(static_cast<unsigned char>(v[0]))) {
            out << YAML::Key << key << YAML::Value << YAML::Flow << YAML::BeginSeq;
            for (int64_t l : resolve_moe_layers(v, 1 << 20)) out << l;
            out << YAML::EndSeq;
        } else {
            field(key, v);
        }
    }
    void field(const char * key, const std::vector<std::string> & v) {
        out << YAML::Key << key << YAML::Value << YAML::Flow << YAML::BeginSeq;
        for (const auto & s : v) out << YAML::DoubleQuoted << s;
        out << YAML::EndSeq;
    }
    template <class T, class Visit> void entries(const char * key, const std::vector<T> & v, Visit visit) {
        out << YAML::Key << key << YAML::Value << YAML::BeginSeq;
        for (const auto & e : v) {
            out << YAML::BeginMap;
            visit(*this, e);
            out << YAML::EndMap;
        }
        out << YAML::EndSeq;
    }
    void datasets(const char * key, const std::vector<DatasetEntry> & v);
    void phases(const char * key, const std::vector<CurriculumPhase> & v);
    template <class S> void section(const char * key, S & s);
};

// ---- the schema: every key, once ----------------------------------------------------------

template <class V, class C> void visit_model(V & v, C & c) {
    v.path("llm_path", c.llm_path);
    v.field("dtype", c.dtype);
    v.field("activation_checkpointing", c.activation_checkpointing);
    v.field("device", c.device);
}
template <class V, class C> void visit_vision(V & v, C & c) {
    v.path("path", c.path);
    v.field("select_layer", c.select_layer);
    v.field("select_feature", c.select_feature);
    v.field("image_aspect_ratio", c.image_aspect_ratio);
}
template <class V, class C> void visit_projector(V & v, C & c) { v.field("type", c.type); }
template <class V, class C> void visit_moe(V & v, C & c) {
    v.field("router", c.router);
    v.field("num_experts", c.num_experts);
    v.field("top_k", c.top_k);
    v.field("latent_dim", c.latent_dim);
    v.field("centers_per_expert", c.centers_per_expert);
    v.field("alpha", c.alpha);
    v.field("beta", c.beta);
    v.field("reactivation", c.reactivation);
    v.layers("layers", c.layers);
    v.field("variance_floor", c.variance_floor);
    v.field("ae_hidden", c.ae_hidden);
    v.field("distinct_experts", c.distinct_experts);
    v.field("capacity_factor", c.capacity_factor);
    v.field("aux_coef", c.aux_coef);
    v.field("z_loss_coef", c.z_loss_coef);
    v.field("num_shared_experts", c.num_shared_experts);
    v.field("bias_update_rate", c.bias_update_rate);
}
template <class V, class C> void visit_dataset_entry(V & v, C & c) {
    v.path("json", c.json);
    v.path("image_root", c.image_root);
}
template <class V, class C> void visit_curriculum_phase(V & v, C & c) {
    v.field("steps", c.steps);
    v.field("lr", c.lr);
    v.field("batch_size", c.batch_size);
    v.datasets("train", c.train);
}
template <class V, class C> void visit_data(V & v, C & c) {
    v.datasets("train", c.train);
    v.phases("curriculum", c.curriculum);
    v.field("template", c.template_name);
    v.path("tokenizer", c.tokenizer);
    v.field("batch_size", c.batch_size);
    v.field("grad_accum", c.grad_accum);
    v.field("max_length", c.max_length);
    v.field("num_workers", c.num_workers);
    v.field("prefetch", c.prefetch);
    v.field("group_by_modality_length", c.group_by_modality_length);
    v.field("max_bad_fraction", c.max_bad_fraction);
}
template <class V, class C> void visit_train(V & v, C & c) {
    v.field("stage", c.stage);
    v.path("init_from", c.init_from);
    v.path("output_dir", c.output_dir);
    v.field("max_steps", c.max_steps);
    v.field("epochs", c.epochs);
    v.field("lr", c.lr);
    v.field("min_lr_ratio", c.min_lr_ratio);
    v.field("warmup_ratio", c.warmup_ratio);
    v.field("weight_decay", c.weight_decay);
    v.field("adam_beta1", c.adam_beta1);
    v.field("adam_beta2", c.adam_beta2);
    v.field("adam_eps", c.adam_eps);
    v.field("grad_clip", c.grad_clip);
    v.field("gmm_lr_scale", c.gmm_lr_scale);
    v.field("seed", c.seed);
    v.field("log_every", c.log_every);
    v.field("save_every", c.save_every);
    v.field("stop_after", c.stop_after);
    v.field("max_nonfinite_in_row", c.max_nonfinite_in_row);
    v.field("trainable", c.trainable);
}
template <class V, class C> void visit_dist(V & v, C & c) {
    v.field("backend", c.backend);
    v.field("timeout_s", c.timeout_s);
    v.field("bucket_mb", c.bucket_mb);
    v.field("overlap", c.overlap);
}
template <class V, class C> void visit_checkpoint(V & v, C & c) {
    v.field("keep_last", c.keep_last);
    v.field("save_optimizer", c.save_optimizer);
}
template <class V, class C> void visit_logging(V & v, C & c) {
    v.field("level", c.level);
    v.field("all_ranks", c.all_ranks);
    v.field("jsonl", c.jsonl);
    v.field("progress_bar", c.progress_bar);
}
template <class V, class C> void visit_config(V & v, C & c) {
    v.section("model", c.model);
    v.section("vision", c.vision);
    v.section("projector", c.projector);
    v.section("moe", c.moe);
    v.section("data", c.data);
    v.section("train", c.train);
    v.section("dist", c.dist);
    v.section("checkpoint", c.checkpoint);
    v.section("logging", c.logging);
}

template <class V> void visit_any(V & v, ModelConfig & c) { visit_model(v, c); }
template <class V> void visit_any(V & v, VisionConfig & c) { visit_vision(v, c); }
template <class V> void visit_any(V & v, ProjectorConfig & c) { visit_projector(v, c); }
template <class V> void visit_any(V & v, MoeConfig & c) { visit_moe(v, c); }
template <class V> void visit_any(V & v, DataConfig & c) { visit_data(v, c); }
template <class V> void visit_any(V & v, TrainConfig & c) { visit_train(v, c); }
template <class V> void visit_any(V & v, DistConfig & c) { visit_dist(v, c); }
template <class V> void visit_any(V & v, CheckpointConfig & c) { visit_checkpoint(v, c); }
template <class V> void visit_any(V & v, LoggingConfig & c) { visit_logging(v, c); }

template <class S> void Reader::section(const char * key, S & s) {
    YAML::Node n = get(key);
    std::string k = join_key(prefix, key);
    if (n && !n.IsMap() && !n.IsNull()) fail(at(k), k, "expected a mapping of keys, got " + show(n));
    Reader sub{n, k, origins, top_file, top_dir, {}};
    visit_any(sub, s);
    sub.finish();
}

void Reader::datasets(const char * key, std::vector<DatasetEntry> & v) {
    const std::string k = join_key(prefix, key);
    entries(key, v, {"json", "image_root"}, "{json, image_root}", "json: and image_root:",
            [](Reader & sub, DatasetEntry & e) { visit_dataset_entry(sub, e); },
            [&](const DatasetEntry & e, const std::string & ek) {
                if (e.json.empty()) fail(at(k), ek + ".json", "missing required key (expected the path of a LLaVA JSON file)");
            });
}

void Reader::phases(const char * key, std::vector<CurriculumPhase> & v) {
    const std::string k = join_key(prefix, key);
    entries(key, v, {"steps", "lr", "batch_size", "train"}, "{steps, train}", "steps: and train:",
            [](Reader & sub, CurriculumPhase & p) { visit_curriculum_phase(sub, p); },
            [&](const CurriculumPhase & p, const std::string & ek) {
                if (p.steps <= 0)
                    fail(at(k), ek + ".steps", "expected a positive number of optimizer steps, got " + std::to_string(p.steps));
                if (p.lr < 0) fail(at(k), ek + ".lr", "expected a peak learning rate > 0, or 0 to follow train.lr's schedule");
                if (p.batch_size < 0)
                    fail(at(k), ek + ".batch_size", "expected a micro-batch size > 0, or 0 for data.batch_size, got " + std::to_string(p.batch_size));
                if (p.train.empty()) fail(at(k), ek + ".train", "missing required key (expected a list of {json, image_root})");
            });
}

template <class S> void Writer::section(const char * key, S & s) {
    out << YAML::Key << key << YAML::Value << YAML::BeginMap;
    visit_any(*this, s);
    out << YAML::EndMap;
}

void Writer::datasets(const char * key, const std::vector<DatasetEntry> & v) {
    entries(key, v, [](Writer & w, const DatasetEntry & e) { visit_dataset_entry(w, e); });
}

void Writer::phases(const char * key, const std::vector<CurriculumPhase> & v) {
    if (v.empty()) return;  // configs without a curriculum print as before
    entries(key, v, [](Writer & w, const CurriculumPhase & p) { visit_curriculum_phase(w, p); });
}

// ---- validation -----------------------------------------------------------------------------

void check_one_of(const Origins & o, const std::string & top, const std::string & key, const std::string & v,
                  const std::vector<std::string> & allowed) {
    if (std::find(allowed.begin(), allowed.end(), v) != allowed.end()) return;
    std::string list;
    for (const auto & a : allowed) list += (list.empty() ? "" : ", ") + a;
    fail(where(o, key, top), key, "expected one of {" + list + "}, got '" + v + "'");
}

void validate(const Config & c, const Origins & o, const std::string & top) {
    auto at = [&](const std::string & k) { return where(o, k, top); };
    auto require = [&](bool ok, const std::string & k, const std::string & msg) {
        if (!ok) fail(at(k), k, msg);
    };
    if (c.model.llm_path.empty()) fail(top, "model.llm_path", "missing required key (expected a Hugging Face model directory)");
    if (c.data.train.empty()) fail(top, "data.train", "missing required key (expected a list of {json, image_root})");
    require(c.train.stage >= 1 && c.train.stage <= 3, "train.stage", "expected 1, 2 or 3, got " + std::to_string(c.train.stage));
    if (c.train.stage >= 2 && c.train.init_from.empty())
        fail(top, "train.init_from", "missing required key: stage " + std::to_string(c.train.stage) +
                                          " starts from the previous stage's output directory");
    require(c.train.lr > 0, "train.lr", "must be > 0");
    require(c.train.max_steps >= 0, "train.max_steps", "must be >= 0");
    require(c.train.max_steps > 0 || c.train.epochs > 0, "train.epochs", "must be > 0 when train.max_steps is 0");
    const int64_t phase_steps = curriculum_steps(c.data);
    require(c.train.max_steps == 0 || c.train.max_steps > phase_steps, "train.max_steps",
            "must exceed the " + std::to_string(phase_steps) + " steps of data.curriculum, so that data.train gets some (got " +
                std::to_string(c.train.max_steps) + ")");
    require(c.train.warmup_ratio >= 0 && c.train.warmup_ratio <= 1, "train.warmup_ratio", "must be in [0, 1]");
    require(c.train.min_lr_ratio >= 0 && c.train.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]");
    require(c.train.weight_decay >= 0, "train.weight_decay", "must be >= 0");
    require(c.train.adam_beta1 >= 0 && c.train.adam_beta1 < 1, "train.adam_beta1", "must be in [0, 1)");
    require(c.train.adam_beta2 >= 0 && c.train.adam_beta2 < 1, "train.adam_beta2", "must be in [0, 1)");
    require(c.train.adam_eps > 0, "train.adam_eps", "must be > 0");
    require(c.train.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 disables clipping)");
    require(c.train.gmm_lr_scale > 0, "train.gmm_lr_scale", "must be > 0");
    require(c.train.log_every >= 1, "train.log_every", "must be >= 1");
    require(c.train.save_every >= 0, "train.save_every", "must be >= 0 (0 saves only at the end)");
    require(c.train.stop_after >= 0, "train.stop_after", "must be >= 0");
    require(c.train.max_nonfinite_in_row >= 1, "train.max_nonfinite_in_row", "must be >= 1");
    require(!c.train.output_dir.empty(), "train.output_dir", "must not be empty");

    check_one_of(o, top, "model.dtype", c.model.dtype, {"float32", "bfloat16"});
    check_one_of(o, top, "model.device", c.model.device, {"auto", "cpu", "cuda"});
    check_one_of(o, top, "vision.select_feature", c.vision.select_feature, {"patch", "cls_patch"});
    check_one_of(o, top, "vision.image_aspect_ratio", c.vision.image_aspect_ratio, {"pad", "resize"});
    check_one_of(o, top, "projector.type", c.projector.type, {"mlp2x_gelu", "linear"});
    check_one_of(o, top, "moe.router", c.moe.router, {"ida", "linear_aux", "st_moe", "xmoe", "auxfree", "deepseek"});
    check_one_of(o, top, "data.template", c.data.template_name, {"plain", "moe_llava", "chatml"});
    check_one_of(o, top, "dist.backend", c.dist.backend, {"auto", "gloo", "nccl"});
    check_one_of(o, top, "logging.level", c.logging.level, {"trace", "debug", "info", "warn", "error"});

    require(c.moe.num_experts >= 1, "moe.num_experts", "must be >= 1");
    require(c.moe.top_k >= 1, "moe.top_k", "must be >= 1");
    require(c.moe.top_k <= c.moe.num_experts, "moe.top_k",
            "top_k (" + std::to_string(c.moe.top_k) + ") must be <= moe.num_experts (" + std::to_string(c.moe.num_experts) + ")");
    require(c.moe.latent_dim >= 1, "moe.latent_dim", "must be >= 1");
    require(c.moe.centers_per_expert >= 1, "moe.centers_per_expert", "must be >= 1");
    require(c.moe.alpha >= 0, "moe.alpha", "must be >= 0");
    require(c.moe.beta >= 0, "moe.beta", "must be >= 0");
    require(c.moe.variance_floor > 0, "moe.variance_floor", "must be > 0");
    require(c.moe.ae_hidden >= 1, "moe.ae_hidden", "must be >= 1");
    require(c.moe.capacity_factor >= 0, "moe.capacity_factor", "must be >= 0 (0 = dropless)");
    require(c.moe.aux_coef >= 0, "moe.aux_coef", "must be >= 0");
    require(c.moe.z_loss_coef >= 0, "moe.z_loss_coef", "must be >= 0");
    require(c.moe.num_shared_experts >= 0, "moe.num_shared_experts", "must be >= 0");
    require(c.moe.bias_update_rate >= 0, "moe.bias_update_rate", "must be >= 0");

    require(c.data.batch_size >= 1, "data.batch_size", "must be >= 1");
    require(c.data.grad_accum >= 1, "data.grad_accum", "must be >= 1");
    require(c.data.max_length >= 1, "data.max_length", "must be >= 1");
    require(c.data.num_workers >= 0, "data.num_workers", "must be >= 0");
    require(c.data.prefetch >= 1, "data.prefetch", "must be >= 1");
    require(c.data.max_bad_fraction >= 0 && c.data.max_bad_fraction <= 1, "data.max_bad_fraction", "must be in [0, 1]");
    require(c.dist.timeout_s >= 1, "dist.timeout_s", "must be >= 1");
    require(c.dist.bucket_mb >= 1, "dist.bucket_mb", "must be >= 1");
    require(c.checkpoint.keep_last >= 1, "checkpoint.keep_last", "must be >= 1");
}

Config bind_config(const YAML::Node & merged, const Origins & origins, const std::string & top,
                   const std::string & top_dir) {
    Config cfg;
    cfg.source_file = top;
    Reader r{merged, "", origins, top, top_dir, {}};
    visit_config(r, cfg);
    r.known.push_back("base");
    r.finish();
    validate(cfg, origins, top);
    return cfg;
}

}  // namespace

std::vector<int64_t> resolve_moe_layers(const std::string & spec, int64_t n_layer) {
    std::vector<int64_t> out;
    if (spec == "every_other") {
        for (int64_t i = 0; i < n_layer; i += 2) out.push_back(i);  // MoE-LLaVA: layers 0, 2, 4, ...
        return out;
    }
    if (spec == "all") {
        for (int64_t i = 0; i < n_layer; ++i) out.push_back(i);
        return out;
    }
    std::stringstream ss(spec);
    for (std::string p; std::getline(ss, p, ',');) {
        char * end = nullptr;
        long long x = std::strtoll(p.c_str(), &end, 10);
        if (p.empty() || *end != '\0' || x < 0)
            throw std::invalid_argument("expected every_other, all, or a list of layer indices, got '" + spec + "'");
        if (x >= n_layer)
            throw std::invalid_argument("layer " + std::to_string(x) + " does not exist (the decoder has " +
                                        std::to_string(n_layer) + " layers)");
        if (std::find(out.begin(), out.end(), x) != out.end())
            throw std::invalid_argument("layer " + std::to_string(x) + " is listed twice");
        out.push_back(x);
    }
    if (out.empty()) throw std::invalid_argument("expected at least one layer index");
    std::sort(out.begin(), out.end());
    return out;
}

Config load_config(const std::string & file, const std::vector<std::string> & overrides) {
    YAML::Node merged(YAML::NodeType::Map);
    Origins origins;
    std::vector<std::string> stack;
    load_file_chain(file, stack, merged, origins);
    for (const auto & ov : overrides) apply_override(ov, merged, origins);
    return bind_config(merged, origins, file, fs::absolute(file).parent_path().string());
}

Config load_config_from_string(const std::string & yaml_text, const std::string & name, const std::string & base_dir,
                               const std::vector<std::string> & overrides) {
    YAML::Node merged(YAML::NodeType::Map);
    Origins origins;
    std::vector<std::string> stack{name};
    YAML::Node doc = parse_yaml_text(yaml_text, name);
    load_chain(doc, name, base_dir, stack, merged, origins);
    for (const auto & ov : overrides) apply_override(ov, merged, origins);
    return bind_config(merged, origins, name, base_dir);
}

std::string config_to_yaml(const Config & cfg) {
    YAML::Emitter out;
    out << YAML::BeginMap;
    Writer w{out};
    Config copy = cfg;
    visit_config(w, copy);
    out << YAML::EndMap;
    return std::string(out.c_str()) + "\n";
}

}  // namespace idamoe::core
