#include "selector/weighted_draw.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace carbon::selector {

WeightedDraw::WeightedDraw(const std::vector<VariantWeight>& weights) {
  double total = 0;
  for (const VariantWeight& w : weights) total += std::max(w.weight, 0.0);
  if (!(total > 0)) {
    // Nothing to share: the first variant named (or variant 0) takes everything.
    shares_.emplace_back(weights.empty() ? 0 : weights.front().variant, kPeriod);
  } else {
    // Largest-remainder rounding to thousandths, so the shares sum to exactly kPeriod.
    std::vector<double> remainder;
    uint32_t assigned = 0;
    for (const VariantWeight& w : weights) {
      const double exact = std::max(w.weight, 0.0) / total * kPeriod;
      const auto whole = static_cast<uint32_t>(std::floor(exact));
      shares_.emplace_back(w.variant, whole);
      remainder.push_back(exact - whole);
      assigned += whole;
    }
    std::vector<size_t> order(shares_.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return remainder[a] > remainder[b]; });
    for (size_t k = 0; assigned < kPeriod; ++k, ++assigned) ++shares_[order[k % order.size()]].second;
    std::erase_if(shares_, [](const auto& s) { return s.second == 0; });
  }
  if (shares_.size() == 1) {
    sequence_.push_back(static_cast<uint8_t>(shares_[0].first));
    return;
  }
  // Smooth weighted round robin: every share is added to its credit, the largest credit is taken
  // and pays kPeriod back.
  std::vector<int64_t> credit(shares_.size(), 0);
  sequence_.reserve(kPeriod);
  for (uint32_t step = 0; step < kPeriod; ++step) {
    size_t best = 0;
    for (size_t i = 0; i < shares_.size(); ++i) {
      credit[i] += shares_[i].second;
      if (credit[i] > credit[best]) best = i;
    }
    credit[best] -= kPeriod;
    sequence_.push_back(static_cast<uint8_t>(shares_[best].first));
  }
}

}  // namespace carbon::selector
