// Loader for the golden reference files in tests/data/ (written by tests/reference/*.py).
//
// Format (one file, many cases; '#' lines and blank lines between cases are ignored):
//
//   case <unique_name>
//   kind sdpa | weights | mha         kernels (kernels.txt; sinks_alibi.txt: mha with optional 1 x H
//                                     matrices 'sinks' and 'alibi', and 'lse')
//      | mha_layer | gqa_layer | mla_layer | rope | to_grouped | svd     layers (layers.txt)
//      | slopes                       geometric ALiBi slopes (sinks_alibi.txt)
//   scale <double>                    optional: custom scale
//   mask none | causal | causal_top_left | sliding_window <w>     (optional for kind rope only)
//   softcap <double>                  optional: > 0
//   heads <H> <G>                     mha only
//   param <name> <value>              a named scalar (number or word), e.g. 'param d_model 32',
//                                     'param rope_layout half_split'; read with GoldenCase::number,
//                                     integer, text (they throw if the param is missing or malformed)
//   matrix <name> <rows> <cols>       then <rows> lines of <cols> numbers (inf, -inf, nan allowed)
//   ...
//   end
//
// Unknown header keys are an error (so a typo in the generator cannot silently drop an option).
// The kernel kinds (sdpa, weights, mha) have their required matrices checked here; the layer kinds
// name their own matrices (e.g. "x", "q_proj.weight", "q_proj.bias" as a 1 x n row, "out") and the
// tests read them with at(), which throws for a missing one.
#pragma once

#include <Eigen/Core>
#include <attend/attend.hpp>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#ifndef ATTEND_TEST_DATA_DIR
#define ATTEND_TEST_DATA_DIR "tests/data"
#endif

namespace attend_test {

struct GoldenCase {
  std::string name, kind;
  std::optional<double> scale;
  std::string mask = "none";
  int window = 0;
  double softcap = 0;
  int heads = 0, kv_heads = 0;
  std::map<std::string, Eigen::MatrixXd> m;
  std::map<std::string, std::string> params;  // 'param <name> <value>' lines, value verbatim

  bool has(const std::string& key) const { return m.count(key) != 0; }
  bool has_param(const std::string& key) const { return params.count(key) != 0; }
  const std::string& text(const std::string& key) const {
    auto it = params.find(key);
    if (it == params.end()) throw std::out_of_range("golden case " + name + " has no param '" + key + "'");
    return it->second;
  }
  double number(const std::string& key) const {
    const std::string& s = text(key);
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (end == s.c_str() || *end != '\0')
      throw std::runtime_error("golden case " + name + ": param '" + key + "' is not a number: '" + s + "'");
    return v;
  }
  int integer(const std::string& key) const {
    const double v = number(key);
    if (!(std::abs(v) <= 1e8) || v != static_cast<double>(static_cast<long>(v)))
      throw std::runtime_error("golden case " + name + ": param '" + key + "' is not an integer: '" + text(key) + "'");
    return static_cast<int>(v);
  }
  const Eigen::MatrixXd& at(const std::string& key) const {
    auto it = m.find(key);
    if (it == m.end()) throw std::out_of_range("golden case " + name + " has no matrix '" + key + "'");
    return it->second;
  }
};

namespace detail {

// Directory of the golden files: $ATTEND_TEST_DATA_DIR if set, else the compile-time definition.
inline std::string data_dir() {
  if (const char* env = std::getenv("ATTEND_TEST_DATA_DIR"); env != nullptr && *env != '\0') return env;
  return ATTEND_TEST_DATA_DIR;
}

inline std::vector<std::string> split(const std::string& line) {
  std::vector<std::string> out;
  std::istringstream in(line);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

class Parser {
 public:
  explicit Parser(std::string path) : path_(std::move(path)), in_(path_) {
    if (!in_) throw std::runtime_error(path_ + ": cannot open golden file");
  }

  std::vector<GoldenCase> parse() {
    std::vector<GoldenCase> cases;
    std::set<std::string> names;
    std::vector<std::string> w;
    while (next(w)) {
      if (w[0] != "case" || w.size() != 2) fail("expected 'case <name>'");
      if (!names.insert(w[1]).second) fail("duplicate case name '" + w[1] + "'");
      cases.push_back(parse_case(w[1]));
    }
    return cases;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(path_ + ":" + std::to_string(line_no_) + ": " + what);
  }

  // Next non-blank, non-comment line split into words; false at end of file.
  bool next(std::vector<std::string>& words) {
    std::string line;
    while (std::getline(in_, line)) {
      ++line_no_;
      words = split(line);
      if (!words.empty() && words[0][0] != '#') return true;
    }
    return false;
  }

  double number(const std::string& s) const {
    // strtod accepts inf, -inf, infinity, nan (any case) and the usual decimal forms.
    const char* begin = s.c_str();
    char* end = nullptr;
    errno = 0;
    const double v = std::strtod(begin, &end);
    if (end == begin || *end != '\0') fail("not a number: '" + s + "'");
    // ERANGE on underflow (denormals) is harmless; on overflow strtod returns +-HUGE_VAL = inf,
    // which only "inf" should produce.
    if (errno == ERANGE && std::abs(v) > 1.0) fail("number out of range: '" + s + "'");
    return v;
  }

  int integer(const std::string& s) const {
    const double v = number(s);
    if (!(v >= 0 && v <= 1e8) || v != static_cast<double>(static_cast<long>(v)))
      fail("expected a non-negative integer, got '" + s + "'");
    return static_cast<int>(v);
  }

  GoldenCase parse_case(const std::string& name) {
    GoldenCase c;
    c.name = name;
    bool have_mask = false, have_heads = false;
    std::vector<std::string> w;
    for (;;) {
      if (!next(w)) fail("case " + name + ": unexpected end of file (missing 'end')");
      const std::string& key = w[0];
      if (key == "end") {
        if (w.size() != 1) fail("trailing text after 'end'");
        break;
      } else if (key == "kind") {
        static const std::set<std::string> kinds = {"sdpa",      "weights", "mha",        "mha_layer", "gqa_layer",
                                                    "mla_layer", "rope",    "to_grouped", "svd",       "slopes"};
        if (w.size() != 2 || kinds.count(w[1]) == 0)
          fail("expected 'kind sdpa|weights|mha|mha_layer|gqa_layer|mla_layer|rope|to_grouped|svd|slopes'");
        c.kind = w[1];
      } else if (key == "scale") {
        if (w.size() != 2) fail("expected 'scale <double>'");
        c.scale = number(w[1]);
      } else if (key == "mask") {
        have_mask = true;
        if (w.size() == 2 && (w[1] == "none" || w[1] == "causal" || w[1] == "causal_top_left")) {
          c.mask = w[1];
        } else if (w.size() == 3 && w[1] == "sliding_window") {
          c.mask = w[1];
          c.window = integer(w[2]);
          if (c.window < 1) fail("sliding_window needs w >= 1");
        } else {
          fail("expected 'mask none|causal|causal_top_left|sliding_window <w>'");
        }
      } else if (key == "softcap") {
        if (w.size() != 2) fail("expected 'softcap <double>'");
        c.softcap = number(w[1]);
      } else if (key == "heads") {
        if (w.size() != 3) fail("expected 'heads <H> <G>'");
        c.heads = integer(w[1]);
        c.kv_heads = integer(w[2]);
        have_heads = true;
      } else if (key == "param") {
        if (w.size() != 3) fail("expected 'param <name> <value>'");
        if (!c.params.emplace(w[1], w[2]).second) fail("duplicate param '" + w[1] + "'");
      } else if (key == "matrix") {
        if (w.size() != 4) fail("expected 'matrix <name> <rows> <cols>'");
        if (c.has(w[1])) fail("duplicate matrix '" + w[1] + "'");
        c.m[w[1]] = parse_matrix(integer(w[2]), integer(w[3]));
      } else {
        fail("unknown key '" + key + "' in case " + name);
      }
    }
    // Structural checks, so a test never reads a matrix that is not there.
    auto need = [&](const char* key) {
      if (!c.has(key)) fail("case " + name + " (kind " + c.kind + ") lacks matrix '" + key + "'");
    };
    if (c.kind.empty()) fail("case " + name + " has no 'kind'");
    if (!have_mask && c.kind != "rope" && c.kind != "slopes") fail("case " + name + " has no 'mask'");
    if (c.kind != "sdpa" && c.kind != "weights" && c.kind != "mha") {
      if (have_heads) fail("case " + name + ": 'heads' only belongs to kind mha");
      if (c.has("bias")) fail("case " + name + ": 'bias' only belongs to kind sdpa");
      return c;  // layer kinds: the tests check their own matrices and params
    }
    need("q");
    need("k");
    if (c.kind == "weights") {
      need("weights");
    } else {
      need("v");
      need("out");
    }
    if (c.kind == "mha" && (!have_heads || c.heads < 1 || c.kv_heads < 1))
      fail("case " + name + ": mha needs 'heads <H> <G>' with H, G >= 1");
    if (c.kind != "mha" && have_heads) fail("case " + name + ": 'heads' only belongs to kind mha");
    if (c.has("bias") && c.kind != "sdpa") fail("case " + name + ": 'bias' only belongs to kind sdpa");
    return c;
  }

  Eigen::MatrixXd parse_matrix(int rows, int cols) {
    Eigen::MatrixXd m(rows, cols);
    std::string line;
    for (int r = 0; r < rows; ++r) {
      // Rows are read verbatim (a row of a 0-column matrix is an empty line).
      if (!std::getline(in_, line)) fail("unexpected end of file inside a matrix");
      ++line_no_;
      const std::vector<std::string> w = split(line);
      if (static_cast<int>(w.size()) != cols)
        fail("matrix row has " + std::to_string(w.size()) + " values, expected " + std::to_string(cols));
      for (int j = 0; j < cols; ++j) m(r, j) = number(w[j]);
    }
    return m;
  }

  std::string path_;
  std::ifstream in_;
  int line_no_ = 0;
};

}  // namespace detail

// Reads <data dir>/<file> (or <file> itself when it is an absolute path).
inline std::vector<GoldenCase> load_golden(const std::string& file) {
  const std::string path = (!file.empty() && file[0] == '/') ? file : detail::data_dir() + "/" + file;
  return detail::Parser(path).parse();
}

inline attend::Options options_of(const GoldenCase& c) {
  attend::Options o;
  o.scale = c.scale;
  o.softcap = c.softcap;
  if (c.mask == "none") {
    o.mask = attend::Mask::none();
  } else if (c.mask == "causal") {
    o.mask = attend::Mask::causal();
  } else if (c.mask == "causal_top_left") {
    o.mask = attend::Mask::causal_top_left();
  } else if (c.mask == "sliding_window") {
    o.mask = attend::Mask::sliding_window(c.window);
  } else {
    throw std::runtime_error("golden case " + c.name + ": unknown mask '" + c.mask + "'");
  }
  const auto row = [](const Eigen::MatrixXd& m) { return std::vector<double>(m.data(), m.data() + m.size()); };
  if (c.has("sinks")) o.sinks = row(c.m.at("sinks"));
  if (c.has("alibi")) o.alibi_slopes = row(c.m.at("alibi"));
  return o;
}

}  // namespace attend_test
