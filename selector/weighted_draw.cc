#include "selector/weighted_draw.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>

namespace carbon::selector {

namespace {

using Shares = std::vector<std::pair<size_t, uint32_t>>;

// Weights rounded to thousandths by largest remainder, so the shares sum to exactly `period`; zero
// shares dropped. Nothing to share: the first variant named (or variant 0) takes everything.
Shares RoundedShares(const std::vector<VariantWeight>& weights, uint32_t period) {
  Shares shares;
  double total = 0;
  for (const VariantWeight& w : weights) total += std::max(w.weight, 0.0);
  if (!(total > 0)) {
    shares.emplace_back(weights.empty() ? 0 : weights.front().variant, period);
    return shares;
  }
  std::vector<double> remainder;
  uint32_t assigned = 0;
  for (const VariantWeight& w : weights) {
    const double exact = std::max(w.weight, 0.0) / total * period;
    const auto whole = static_cast<uint32_t>(std::floor(exact));
    shares.emplace_back(w.variant, whole);
    remainder.push_back(exact - whole);
    assigned += whole;
  }
  std::vector<size_t> order(shares.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return remainder[a] > remainder[b]; });
  for (size_t k = 0; assigned < period; ++k, ++assigned) ++shares[order[k % order.size()]].second;
  std::erase_if(shares, [](const auto& s) { return s.second == 0; });
  return shares;
}

// Smooth weighted round robin over `shares` (summing to the sequence's length): every share is added
// to its credit, the largest credit is taken and pays the total back.
std::vector<uint8_t> SmoothSequence(const Shares& shares) {
  int64_t total = 0;
  for (const auto& s : shares) total += s.second;
  std::vector<int64_t> credit(shares.size(), 0);
  std::vector<uint8_t> sequence;
  sequence.reserve(static_cast<size_t>(total));
  for (int64_t step = 0; step < total; ++step) {
    size_t best = 0;
    for (size_t i = 0; i < shares.size(); ++i) {
      credit[i] += shares[i].second;
      if (credit[i] > credit[best]) best = i;
    }
    credit[best] -= total;
    sequence.push_back(static_cast<uint8_t>(shares[best].first));
  }
  return sequence;
}

// Which thousandths of `to` came from which variant of `from`: both laid out in ascending variant
// order (ascending energy) on the same line of kPeriod positions and read off side by side, so a
// share moved down the ladder is counted once, from where it was to where it went.
std::vector<std::array<uint32_t, 256>> MovedShares(const Shares& from, const Shares& to) {
  std::vector<std::array<uint32_t, 256>> moved(to.size());
  for (auto& row : moved) row.fill(0);
  size_t f = 0, t = 0;
  uint32_t f_left = from.empty() ? 0 : from[0].second, t_left = to.empty() ? 0 : to[0].second;
  while (f < from.size() && t < to.size()) {
    const uint32_t n = std::min(f_left, t_left);
    moved[t][from[f].first] += n;
    f_left -= n;
    t_left -= n;
    if (f_left == 0 && ++f < from.size()) f_left = from[f].second;
    if (t_left == 0 && ++t < to.size()) t_left = to[t].second;
  }
  return moved;
}

}  // namespace

WeightedDraw::WeightedDraw(const std::vector<VariantWeight>& weights, const std::vector<VariantWeight>& origin) {
  shares_ = RoundedShares(weights, kPeriod);
  if (origin.empty()) {
    sequence_ = shares_.size() == 1 ? std::vector<uint8_t>{static_cast<uint8_t>(shares_[0].first)}
                                    : SmoothSequence(shares_);
    return;
  }
  auto ascending = [](Shares s) {
    std::sort(s.begin(), s.end());
    return s;
  };
  const Shares to = ascending(shares_);
  const std::vector<std::array<uint32_t, 256>> moved = MovedShares(ascending(RoundedShares(origin, kPeriod)), to);
  sequence_ = SmoothSequence(shares_);
  // The positions of each variant get their origins spread evenly over them, in the same way.
  origins_.resize(kPeriod);
  for (size_t t = 0; t < to.size(); ++t) {
    Shares from;
    for (size_t v = 0; v < moved[t].size(); ++v) {
      if (moved[t][v] > 0) from.emplace_back(v, moved[t][v]);
    }
    const std::vector<uint8_t> spread = SmoothSequence(from);
    size_t k = 0;
    for (uint32_t p = 0; p < kPeriod; ++p) {
      if (sequence_[p] == to[t].first) origins_[p] = spread[k++];
    }
  }
}

}  // namespace carbon::selector
