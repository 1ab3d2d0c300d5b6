#include "selector/energy_fit.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace carbon::selector {
namespace {

using Matrix = std::vector<std::vector<double>>;

// Solves a x = b for a small symmetric positive (semi)definite a by Gaussian elimination with
// partial pivoting; nullopt when a is singular to working precision.
std::optional<std::vector<double>> Solve(Matrix a, std::vector<double> b) {
  const size_t n = b.size();
  for (size_t col = 0; col < n; ++col) {
    size_t pivot = col;
    for (size_t r = col + 1; r < n; ++r) {
      if (std::abs(a[r][col]) > std::abs(a[pivot][col])) pivot = r;
    }
    if (std::abs(a[pivot][col]) < 1e-12) return std::nullopt;
    std::swap(a[pivot], a[col]);
    std::swap(b[pivot], b[col]);
    for (size_t r = col + 1; r < n; ++r) {
      const double f = a[r][col] / a[col][col];
      for (size_t c = col; c < n; ++c) a[r][c] -= f * a[col][c];
      b[r] -= f * b[col];
    }
  }
  std::vector<double> x(n, 0.0);
  for (size_t r = n; r-- > 0;) {
    double s = b[r];
    for (size_t c = r + 1; c < n; ++c) s -= a[r][c] * x[c];
    x[r] = s / a[r][r];
  }
  return x;
}

// The normal equations (XᵀWX, XᵀWy) restricted to the columns in `set`.
std::pair<Matrix, std::vector<double>> Normal(const Matrix& xtx, const std::vector<double>& xty,
                                              const std::vector<size_t>& set) {
  Matrix a(set.size(), std::vector<double>(set.size()));
  std::vector<double> b(set.size());
  for (size_t i = 0; i < set.size(); ++i) {
    b[i] = xty[set[i]];
    for (size_t j = 0; j < set.size(); ++j) a[i][j] = xtx[set[i]][set[j]];
  }
  return {a, b};
}

// Lawson and Hanson's NNLS on the normal equations: min ‖W^½(Xx − y)‖ subject to x ≥ 0.
std::vector<double> NonNegativeLeastSquares(const Matrix& xtx, const std::vector<double>& xty) {
  const size_t n = xty.size();
  std::vector<double> x(n, 0.0);
  std::vector<bool> passive(n, false);
  const auto gradient = [&] {
    std::vector<double> w(n);
    for (size_t i = 0; i < n; ++i) {
      w[i] = xty[i];
      for (size_t j = 0; j < n; ++j) w[i] -= xtx[i][j] * x[j];
    }
    return w;
  };
  constexpr double kTolerance = 1e-10;
  for (size_t outer = 0; outer < 3 * n + 3; ++outer) {
    const std::vector<double> w = gradient();
    std::optional<size_t> best;
    for (size_t i = 0; i < n; ++i) {
      if (!passive[i] && w[i] > kTolerance && (!best || w[i] > w[*best])) best = i;
    }
    if (!best) break;
    passive[*best] = true;
    for (size_t inner = 0; inner < 3 * n + 3; ++inner) {
      std::vector<size_t> set;
      for (size_t i = 0; i < n; ++i) {
        if (passive[i]) set.push_back(i);
      }
      const auto [a, b] = Normal(xtx, xty, set);
      const std::optional<std::vector<double>> z = Solve(a, b);
      if (!z) {
        // A column dependent on the others: leave it at zero.
        passive[*best] = false;
        break;
      }
      bool feasible = true;
      for (double v : *z) feasible = feasible && v > kTolerance;
      if (feasible) {
        std::fill(x.begin(), x.end(), 0.0);
        for (size_t k = 0; k < set.size(); ++k) x[set[k]] = (*z)[k];
        break;
      }
      // Step towards z as far as keeps x ≥ 0, and free the variables that reach zero.
      double alpha = 1;
      for (size_t k = 0; k < set.size(); ++k) {
        if ((*z)[k] <= kTolerance) alpha = std::min(alpha, x[set[k]] / (x[set[k]] - (*z)[k]));
      }
      for (size_t k = 0; k < set.size(); ++k) x[set[k]] += alpha * ((*z)[k] - x[set[k]]);
      for (size_t k = 0; k < set.size(); ++k) {
        if (x[set[k]] <= kTolerance) {
          x[set[k]] = 0;
          passive[set[k]] = false;
        }
      }
    }
  }
  return x;
}

}  // namespace

absl::StatusOr<EnergyEstimate> FitEnergy(std::span<const EnergyInterval> intervals, size_t variants) {
  if (intervals.empty()) return absl::FailedPreconditionError("no interval to fit");
  for (size_t k = 0; k < intervals.size(); ++k) {
    const EnergyInterval& in = intervals[k];
    if (in.inferences.size() != variants) {
      return absl::InvalidArgumentError(
          absl::StrCat("interval ", k, " counts ", in.inferences.size(), " variants, not ", variants));
    }
    bool valid = std::isfinite(in.seconds) && in.seconds > 0 && std::isfinite(in.joules) && in.joules >= 0 &&
                 std::isfinite(in.weight) && in.weight > 0;
    for (double n : in.inferences) valid = valid && std::isfinite(n) && n >= 0;
    if (!valid) return absl::InvalidArgumentError(absl::StrCat("interval ", k, " has a negative or non-finite figure"));
  }
  // Column 0 is idle power (per second); column 1 + v is variant v (per inference). Columns with
  // nothing in them are left out.
  std::vector<size_t> columns = {0};
  for (size_t v = 0; v < variants; ++v) {
    bool any = false;
    for (const EnergyInterval& in : intervals) any = any || in.inferences[v] > 0;
    if (any) columns.push_back(1 + v);
  }
  const auto cell = [&](const EnergyInterval& in, size_t column) {
    return column == 0 ? in.seconds : in.inferences[column - 1];
  };
  const size_t p = columns.size();
  std::vector<double> scale(p, 0.0);
  for (size_t c = 0; c < p; ++c) {
    for (const EnergyInterval& in : intervals) scale[c] += in.weight * cell(in, columns[c]) * cell(in, columns[c]);
    scale[c] = std::sqrt(scale[c]);
  }
  Matrix xtx(p, std::vector<double>(p, 0.0));
  std::vector<double> xty(p, 0.0);
  double weight_sum = 0, mean_y = 0;
  for (const EnergyInterval& in : intervals) {
    weight_sum += in.weight;
    mean_y += in.weight * in.joules;
    for (size_t i = 0; i < p; ++i) {
      const double xi = cell(in, columns[i]) / scale[i];
      xty[i] += in.weight * xi * in.joules;
      for (size_t j = 0; j < p; ++j) xtx[i][j] += in.weight * xi * cell(in, columns[j]) / scale[j];
    }
  }
  mean_y /= weight_sum;
  const std::vector<double> scaled = NonNegativeLeastSquares(xtx, xty);

  EnergyEstimate e;
  e.intervals = intervals.size();
  e.joules_per_inference.assign(variants, 0.0);
  e.stderr_joules.assign(variants, HUGE_VAL);
  e.idle_watts_stderr = HUGE_VAL;
  std::vector<double> coef(p);
  for (size_t c = 0; c < p; ++c) coef[c] = scaled[c] / scale[c];
  double rss = 0, tss = 0;
  for (const EnergyInterval& in : intervals) {
    double fitted = 0;
    for (size_t c = 0; c < p; ++c) fitted += coef[c] * cell(in, columns[c]);
    rss += in.weight * (in.joules - fitted) * (in.joules - fitted);
    tss += in.weight * (in.joules - mean_y) * (in.joules - mean_y);
  }
  e.residual_rms_joules = std::sqrt(rss / weight_sum);
  e.explained = tss > 0 ? 1 - rss / tss : (rss == 0 ? 1 : 0);
  e.idle_watts = coef[0];
  for (size_t c = 1; c < p; ++c) e.joules_per_inference[columns[c] - 1] = coef[c];

  // Standard errors over the unknowns left free (those at zero sit on the bound: no error to tell).
  std::vector<size_t> free;
  for (size_t c = 0; c < p; ++c) {
    if (scaled[c] > 0) free.push_back(c);
  }
  // The weights are relative (forgetting): the residual variance per unit weight, with the
  // weights' sum standing for the number of intervals.
  const double dof = weight_sum * (1 - static_cast<double>(free.size()) / static_cast<double>(intervals.size()));
  if (!free.empty() && intervals.size() > free.size() && dof > 0) {
    const double sigma2 = rss / dof;
    const auto [a, unused] = Normal(xtx, xty, free);
    for (size_t k = 0; k < free.size(); ++k) {
      std::vector<double> unit(free.size(), 0.0);
      unit[k] = 1;
      const std::optional<std::vector<double>> column = Solve(a, unit);
      if (!column) continue;
      const double se = std::sqrt(std::max(0.0, sigma2 * (*column)[k])) / scale[free[k]];
      if (columns[free[k]] == 0) {
        e.idle_watts_stderr = se;
      } else {
        e.stderr_joules[columns[free[k]] - 1] = se;
      }
    }
  }
  return e;
}

}  // namespace carbon::selector
