#pragma once

#include <memory>

#include "selector/pool.h"

namespace carbon::testing {

// The ResNet pool of Jung's Table 1 (V100, Triton): energy per inference in mJ, top-1 error in %.
// Index 0 resnet34, 1 resnet50, 2 resnet101, 3 resnet152.
inline constexpr double kResnetEnergyMj[] = {359.9321833, 420.6213298, 803.0948846, 1238.147188};
inline constexpr double kResnetErrorPercent[] = {8.58, 7.138, 6.454, 5.954};

inline std::shared_ptr<const selector::Pool> PaperResnetPool() {
  static const auto* pool = new std::shared_ptr<const selector::Pool>(std::make_shared<const selector::Pool>(
      *selector::Pool::Create({{"resnet34", kResnetEnergyMj[0], kResnetErrorPercent[0]},
                               {"resnet50", kResnetEnergyMj[1], kResnetErrorPercent[1]},
                               {"resnet101", kResnetEnergyMj[2], kResnetErrorPercent[2]},
                               {"resnet152", kResnetEnergyMj[3], kResnetErrorPercent[3]}})));
  return *pool;
}

}  // namespace carbon::testing
