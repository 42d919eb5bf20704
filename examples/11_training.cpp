// Training an attention layer: gradients from MultiHeadAttention::backward, plain SGD, a toy task.
//
// The task: read a sequence of 6 tokens (from a vocabulary of 8) and write it reversed. Token t of the input is
// [one-hot of its symbol | one-hot of its position]; one MultiHeadAttention layer (2 heads of 8, no mask: every
// position may look at every other) then a linear readout to the 8 symbols give each position a distribution over
// the symbols, and the loss is the cross-entropy against the reversed sequence. To solve it the layer must learn
// to attend from position i to position 5 - i (its queries and keys read the position part) and to carry that
// token's symbol through its values: nothing in the architecture says so, the gradients find it.
//
// The program
//   1. checks the gradients backward() returns (with the readout's, by the chain rule) against central finite
//      differences of the loss, in double, on the input and on entries of every weight and bias;
//   2. trains from random weights with plain SGD on batches of random sequences, printing the loss per epoch;
//   3. checks that the loss fell, that fresh sequences are reversed correctly, and that some head attends from
//      position t to position 5 - t (attention_weights of its queries and keys): the reversal the layer learned.
// Exit status 1 when a check fails.
#include <algorithm>
#include <attend/attend.hpp>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "util.hpp"

namespace {

using attend::Index;
using M = attend::Matrix<double>;

constexpr int kSymbols = 8, kLength = 6, kModel = kSymbols + kLength, kHeads = 2, kHeadDim = 8;

struct Model {
  attend::MultiHeadAttention<double> attention{kModel, kHeads, kHeads, kHeadDim};
  attend::Linear<double> readout;  // [kSymbols, kModel]
};

/// The gradients of one loss: the layer's (from backward()) and the readout's.
struct Gradients {
  attend::MultiHeadAttention<double>::Gradients attention;
  attend::Linear<double> readout;
};

M encode(const std::vector<int>& symbols) {
  M x = M::Zero(kLength, kModel);
  for (int t = 0; t < kLength; ++t) {
    x(t, symbols[t]) = 1;
    x(t, kSymbols + t) = 1;
  }
  return x;
}

std::vector<int> random_sequence(std::mt19937& rng) {
  std::uniform_int_distribution<int> symbol(0, kSymbols - 1);
  std::vector<int> s(kLength);
  for (int& v : s) v = symbol(rng);
  return s;
}

/// Mean cross-entropy of the readout's logits against the reversed sequence; with `grads`, also the gradients.
double loss(const Model& m, const std::vector<int>& symbols, Gradients* grads = nullptr,
            std::vector<int>* predicted = nullptr) {
  const M x = encode(symbols);
  const M y = m.attention.forward(x);
  const M logits = m.readout(y);
  M dlogits(kLength, kSymbols);
  double total = 0;
  for (int t = 0; t < kLength; ++t) {
    const int target = symbols[kLength - 1 - t];
    const double top = logits.row(t).maxCoeff();
    const Eigen::RowVectorXd p = (logits.row(t).array() - top).exp().matrix();
    const double sum = p.sum();
    total += std::log(sum) + top - logits(t, target);  // -log softmax(logits)[target]
    dlogits.row(t) = p / sum / kLength;                // d loss / d logits = (softmax - one-hot) / length
    dlogits(t, target) -= 1.0 / kLength;
    if (predicted) predicted->push_back(int(std::max_element(p.data(), p.data() + kSymbols) - p.data()));
  }
  if (grads) {
    grads->readout.weight = dlogits.transpose() * y;  // the readout: y W^T + b
    grads->readout.bias = dlogits.colwise().sum().transpose();
    grads->attention = m.attention.backward(x, M(dlogits * m.readout.weight));  // dy = dlogits W
  }
  return total / kLength;
}

/// SGD step: w -= rate * g for every weight and bias.
void descend(Model& m, const Gradients& g, double rate) {
  auto& a = m.attention;
  const auto& ga = g.attention;
  for (auto [w, d] :
       {std::pair{&a.q_proj, &ga.q_proj}, std::pair{&a.k_proj, &ga.k_proj}, std::pair{&a.v_proj, &ga.v_proj},
        std::pair{&a.o_proj, &ga.o_proj}, std::pair{&m.readout, &g.readout}}) {
    w->weight -= rate * d->weight;
    w->bias -= rate * d->bias;
  }
}

void add(Gradients& sum, const Gradients& g) {
  auto& s = sum.attention;
  const auto& a = g.attention;
  for (auto [w, d] : {std::pair{&s.q_proj, &a.q_proj}, std::pair{&s.k_proj, &a.k_proj}, std::pair{&s.v_proj, &a.v_proj},
                      std::pair{&s.o_proj, &a.o_proj}, std::pair{&sum.readout, &g.readout}}) {
    w->weight += d->weight;
    w->bias += d->bias;
  }
}

}  // namespace

int main() {
  std::printf("attend %s: training an attention layer to reverse a sequence (SGD, gradients from backward())\n\n",
              attend::version_string);
  std::mt19937 rng(2024);
  bool ok = true;
  Model model;
  for (auto* lin : {&model.attention.q_proj, &model.attention.k_proj, &model.attention.v_proj, &model.attention.o_proj,
                    &model.readout}) {
    const Index out = lin == &model.readout ? kSymbols : lin->weight.rows();
    const Index in = lin == &model.readout ? kModel : lin->weight.cols();
    lin->weight = ex::random_weight<double>(rng, out, in);
    lin->bias = attend::Vector<double>::Zero(out);
  }

  // 1. The gradients against finite differences.
  {
    const std::vector<int> s = random_sequence(rng);
    Gradients g;
    loss(model, s, &g);
    double worst = 0;
    int checked = 0;
    const auto central = [&](double& w, double analytic) {
      const double h = 1e-6, saved = w;
      w = saved + h;
      const double plus = loss(model, s);
      w = saved - h;
      const double minus = loss(model, s);
      w = saved;
      const double numeric = (plus - minus) / (2 * h);
      worst = std::max(worst, std::abs(numeric - analytic) / (1e-3 + std::abs(numeric)));
      ++checked;
    };
    auto& a = model.attention;
    const auto& ga = g.attention;
    const attend::Linear<double>& gr = g.readout;
    std::uniform_int_distribution<Index> any(0, 1 << 20);
    for (auto [w, d] :
         {std::pair{&a.q_proj, &ga.q_proj}, std::pair{&a.k_proj, &ga.k_proj}, std::pair{&a.v_proj, &ga.v_proj},
          std::pair{&a.o_proj, &ga.o_proj}, std::pair{&model.readout, &gr}})
      for (int n = 0; n < 6; ++n) {
        const Index i = any(rng) % w->weight.size(), b = any(rng) % w->bias.size();
        central(w->weight.data()[i], d->weight.data()[i]);
        central(w->bias.data()[b], d->bias.data()[b]);
      }
    std::printf(
        "1. Gradient check on one sequence: %d entries of the weights and biases of q_proj, k_proj,\n"
        "   v_proj, o_proj and the readout, central differences (h = 1e-6) against backward():\n"
        "   largest relative difference %.1e\n\n",
        checked, worst);
    ok &= ex::check(worst < 1e-5, "backward() agrees with central finite differences (relative 1e-5)");
    std::printf("\n");
  }

  // 2. SGD.
  const int epochs = 12, steps = 40, batch = 16;
  const double rate = 0.5;
  std::printf("2. SGD, learning rate %.2f, %d steps of %d random sequences per epoch:\n\n", rate, steps, batch);
  std::printf("   %5s %12s\n", "epoch", "mean loss");
  std::vector<double> losses;
  const double seconds = ex::seconds([&] {
    for (int e = 0; e < epochs; ++e) {
      double total = 0;
      for (int step = 0; step < steps; ++step) {
        Gradients sum, g;
        for (int b = 0; b < batch; ++b) {
          total += loss(model, random_sequence(rng), &g);
          if (b == 0)
            sum = g;
          else
            add(sum, g);
        }
        descend(model, sum, rate / batch);
      }
      losses.push_back(total / (steps * batch));
      std::printf("   %5d %12.4f\n", e + 1, losses.back());
    }
  });
  std::printf("\n   %d steps in %.2f s (each sequence: forward, loss, backward)\n\n", epochs * steps, seconds);

  // 3. What it learned.
  int right = 0, total = 0;
  std::vector<int> shown, shown_out;
  for (int n = 0; n < 200; ++n) {
    const std::vector<int> s = random_sequence(rng);
    std::vector<int> predicted;
    loss(model, s, nullptr, &predicted);
    for (int t = 0; t < kLength; ++t) right += predicted[t] == s[kLength - 1 - t], ++total;
    if (n == 0) shown = s, shown_out = predicted;
  }
  std::printf("3. On 200 fresh sequences: %d of %d symbols right (%.1f%%); e.g.\n   in  ", right, total,
              100.0 * right / total);
  for (int v : shown) std::printf(" %d", v);
  std::printf("\n   out ");
  for (int v : shown_out) std::printf(" %d", v);
  std::printf("\n\n   where each position looks (head 0, attention_weights of its queries and keys):\n");
  const M x = encode(shown);
  const M q = model.attention.q_proj(x), k = model.attention.k_proj(x);
  bool reversed = false;  // in some head, every position looks hardest at position 5 - t
  for (int h = 0; h < kHeads; ++h) {
    const M w = attend::attention_weights(q.middleCols(h * kHeadDim, kHeadDim), k.middleCols(h * kHeadDim, kHeadDim));
    bool anti_diagonal = true;
    for (int t = 0; t < kLength; ++t) {
      Index at;
      w.row(t).maxCoeff(&at);
      anti_diagonal = anti_diagonal && at == kLength - 1 - t;
      if (h == 0) {
        std::printf("   position %d:", t);
        for (int j = 0; j < kLength; ++j) std::printf(" %5.2f", w(t, j));
        std::printf("\n");
      }
    }
    reversed = reversed || anti_diagonal;
  }
  std::printf("\n");
  ok &= ex::check(losses.back() < 0.25 * losses.front(), "the loss fell to under a quarter of the first epoch's");
  ok &= ex::check(losses.back() < losses[losses.size() / 2], "and was still falling in the second half");
  ok &= ex::check(right >= 0.95 * total, "fresh sequences come out reversed (>= 95% of the symbols right)");
  ok &= ex::check(reversed, "a head learned to look from position t at position 5 - t");
  return ok ? 0 : 1;
}
