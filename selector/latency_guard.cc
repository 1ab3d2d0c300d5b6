#include "selector/latency_guard.h"

#include <algorithm>
#include <cmath>

namespace carbon::selector {

GuardCaps LatencyGuard::Next(const GuardCaps& previous, const std::vector<VariantLoad>& load,
                             const std::vector<double>& served_share, const LatencySlo& slo) {
  GuardCaps next;
  next.cap.assign(load.size(), 1.0);
  next.over.assign(load.size(), false);
  for (size_t v = 0; v < load.size(); ++v) {
    const double cap = v < previous.cap.size() ? previous.cap[v] : 1.0;
    const VariantLoad& l = load[v];
    const bool overloaded = l.overload_answers > 0;
    const bool slow = l.p99 && *l.p99 > slo.latency_p99;
    const bool fast = l.p99 && *l.p99 < slo.latency_p99 * kRecoverBelow;
    if (overloaded || slow) {
      const double share = v < served_share.size() ? served_share[v] : cap;
      next.cap[v] = std::max(kFloor, std::min(cap, share) / 2);
      next.over[v] = true;
    } else if (fast || (l.completions == 0 && !l.p99)) {
      // No calls at all in the window: nothing is queued there, and the cap may grow back.
      next.cap[v] = std::min(1.0, cap + kStep);
    } else {
      next.cap[v] = cap;
    }
  }
  return next;
}

LearnedLimit NextLearnedLimit(const LearnedLimit& previous, const VariantLoad& load, bool limit_reached,
                              const LatencySlo& slo, absl::Time now) {
  LearnedLimit next = previous;
  const bool over = load.overload_answers > 0 || (load.p99 && *load.p99 > slo.latency_p99);
  const bool fast = load.overload_answers == 0 && load.p99 && *load.p99 < slo.latency_p99 * LatencyGuard::kRecoverBelow;
  if (over) {
    if (now - previous.last_cut < slo.window) return next;
    // Overload answers, or a p99 past the histogram's last bound, cut by the most.
    const bool measured = load.p99 && *load.p99 > slo.latency_p99 && *load.p99 != absl::InfiniteDuration();
    const double ratio = measured ? std::max(0.5, absl::FDivDuration(slo.latency_p99, *load.p99)) : 0.5;
    // From the calls it actually had in flight, when fewer than the limit.
    std::optional<double> base;
    if (load.span > absl::ZeroDuration()) base = load.busy_seconds / absl::ToDoubleSeconds(load.span);
    if (previous.limit) base = std::min(base.value_or(HUGE_VAL), static_cast<double>(*previous.limit));
    if (!base) return next;  // nothing to learn from yet
    next.limit = std::max<int64_t>(1, static_cast<int64_t>(std::floor(*base * ratio)));
    next.last_cut = now;
  } else if (fast && limit_reached && previous.limit) {
    next.limit = *previous.limit + std::max<int64_t>(1, *previous.limit / 10);
  }
  return next;
}

std::vector<VariantWeight> CappedWeights(const std::vector<VariantWeight>& weights, const std::vector<double>& caps,
                                         uint64_t ready) {
  std::optional<size_t> cheapest_ready;
  for (size_t v = 0; v < caps.size(); ++v) {
    if ((ready >> v & 1) != 0) {
      cheapest_ready = v;
      break;
    }
  }
  // Nothing can take an excess: the policy's weights stand (it has its own rule for that case).
  if (!cheapest_ready) return weights;
  std::vector<double> share(caps.size(), 0.0);
  for (const VariantWeight& w : weights) {
    if (w.variant < share.size()) share[w.variant] += w.weight;
  }
  double carried = 0;  // spilled from above, on its way to a ready variant with room
  for (size_t v = share.size(); v-- > *cheapest_ready;) {
    const bool is_ready = (ready >> v & 1) != 0;
    double s = share[v];
    if (is_ready) {
      s += carried;
      carried = 0;
    }
    // The cheapest ready variant keeps whatever reaches it.
    if (v != *cheapest_ready && s > caps[v]) {
      carried += s - caps[v];
      s = caps[v];
    }
    share[v] = s;
  }
  std::vector<VariantWeight> out;
  for (size_t v = 0; v < share.size(); ++v) {
    if (share[v] > 1e-9) out.push_back({v, share[v]});
  }
  return out;
}

std::vector<VariantWeight> RampedWeights(const std::vector<VariantWeight>& from, const std::vector<VariantWeight>& to,
                                         double progress) {
  progress = std::clamp(progress, 0.0, 1.0);
  size_t n = 0;
  for (const auto& w : from) n = std::max(n, w.variant + 1);
  for (const auto& w : to) n = std::max(n, w.variant + 1);
  std::vector<double> share(n, 0.0);
  for (const auto& w : from) share[w.variant] += (1 - progress) * w.weight;
  for (const auto& w : to) share[w.variant] += progress * w.weight;
  std::vector<VariantWeight> out;
  for (size_t v = 0; v < n; ++v) {
    if (share[v] > 1e-9) out.push_back({v, share[v]});
  }
  return out;
}

bool SameWeights(const std::vector<VariantWeight>& a, const std::vector<VariantWeight>& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](const auto& x, const auto& y) {
           return x.variant == y.variant && std::abs(x.weight - y.weight) < 1e-6;
         });
}

}  // namespace carbon::selector
