#include "sidecar/request_wire.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace carbon::sidecar {
namespace {

constexpr int kVarint = 0;
constexpr int kFixed64 = 1;
constexpr int kLengthDelimited = 2;
constexpr int kFixed32 = 5;

// A cursor over bytes spread across segments, up to `limit` bytes from the first segment's start.
// Offsets are from the start of the message, also in sub-cursors, so errors can name them.
// Keeps raw pointers into the current segment so that the common case, a field wholly inside one
// segment, is decoded without per-byte bookkeeping; only fields that straddle segments take the
// byte-at-a-time path.
class SegmentCursor {
 public:
  SegmentCursor(std::span<const std::string_view> segments, uint64_t limit)
      : segments_(segments), limit_(limit) {
    if (!segments_.empty()) EnterSegment(0, 0);
    SkipFinishedSegments();
  }

  uint64_t offset() const { return base_ + static_cast<uint64_t>(cur_ - begin_); }
  uint64_t remaining() const { return limit_ - offset(); }
  bool at_end() const { return offset() == limit_; }

  // False when the varint runs past the end or beyond 10 bytes / 64 bits.
  [[gnu::always_inline]] bool ReadVarint(uint64_t* value) {
    if (end_ - cur_ >= 10) {
      const auto* p = reinterpret_cast<const uint8_t*>(cur_);
      uint64_t result = 0;
      for (int i = 0; i < 10; ++i) {
        const uint8_t byte = p[i];
        if (i == 9 && byte > 1) return false;  // bits beyond 64
        result |= uint64_t{byte & 0x7fu} << (7 * i);
        if ((byte & 0x80u) == 0) {
          *value = result;
          cur_ += i + 1;
          SkipFinishedSegments();
          return true;
        }
      }
      return false;
    }
    uint64_t result = 0;
    for (int i = 0; i < 10; ++i) {
      if (at_end()) return false;
      const auto byte = static_cast<uint8_t>(*cur_++);
      SkipFinishedSegments();
      if (i == 9 && byte > 1) return false;
      result |= uint64_t{byte & 0x7fu} << (7 * i);
      if ((byte & 0x80u) == 0) {
        *value = result;
        return true;
      }
    }
    return false;
  }

  bool Skip(uint64_t n) {
    if (n > remaining()) return false;
    while (n > 0) {
      const uint64_t here = std::min<uint64_t>(n, static_cast<uint64_t>(end_ - cur_));
      cur_ += here;
      n -= here;
      SkipFinishedSegments();
    }
    return true;
  }

  // A view of the next n bytes: into the segment when they lie in one, else copied to scratch.
  bool Read(uint64_t n, std::string* scratch, std::string_view* out) {
    if (n > remaining()) return false;
    if (static_cast<uint64_t>(end_ - cur_) >= n) {
      *out = std::string_view(cur_, n);
      cur_ += n;
      SkipFinishedSegments();
      return true;
    }
    scratch->clear();
    while (scratch->size() < n) {
      const uint64_t here = std::min<uint64_t>(n - scratch->size(), static_cast<uint64_t>(end_ - cur_));
      scratch->append(cur_, here);
      cur_ += here;
      SkipFinishedSegments();
    }
    *out = *scratch;
    return true;
  }

  // A cursor over the next n bytes; this cursor moves past them.
  bool Sub(uint64_t n, SegmentCursor* sub) {
    if (n > remaining()) return false;
    *sub = *this;
    sub->limit_ = offset() + n;
    if (static_cast<uint64_t>(end_ - cur_) > n) sub->end_ = cur_ + n;
    return Skip(n);
  }

 private:
  // Makes segment i (starting at message offset `base`) current, its end clamped to the limit.
  void EnterSegment(size_t i, uint64_t base) {
    seg_ = i;
    base_ = base;
    begin_ = cur_ = segments_[i].data();
    end_ = begin_ + std::min<uint64_t>(segments_[i].size(), limit_ - base);
  }
  // Keeps the invariant: the current segment has a byte left, or the cursor is at its limit.
  void SkipFinishedSegments() {
    while (cur_ == end_ && !at_end() && seg_ + 1 < segments_.size()) {
      EnterSegment(seg_ + 1, offset());
    }
  }

  std::span<const std::string_view> segments_;
  size_t seg_ = 0;
  uint64_t base_ = 0;  // message offset of begin_
  const char* begin_ = nullptr;
  const char* cur_ = nullptr;
  const char* end_ = nullptr;
  uint64_t limit_;
};

bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<uint8_t>(s[i]);
    int extra;
    uint32_t min;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      extra = 1, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
      extra = 2, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
      extra = 3, min = 0x10000;
    } else {
      return false;
    }
    if (i + extra >= s.size()) return false;
    uint32_t cp = c & (0x3f >> extra);
    for (int k = 1; k <= extra; ++k) {
      const auto cc = static_cast<uint8_t>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = cp << 6 | (cc & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += extra + 1;
  }
  return true;
}

absl::Status Malformed(uint64_t offset, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("malformed request message at byte ", offset, ": ", what));
}

// Skips one field's value of the given wire type.
absl::Status SkipValue(SegmentCursor& cursor, int wire_type, uint64_t field, uint64_t tag_offset) {
  uint64_t ignored;
  switch (wire_type) {
    case kVarint:
      if (!cursor.ReadVarint(&ignored)) {
        return Malformed(tag_offset, absl::StrCat("field ", field, " has a truncated or over-long varint"));
      }
      return absl::OkStatus();
    case kFixed64:
      if (!cursor.Skip(8)) return Malformed(tag_offset, absl::StrCat("field ", field, " is truncated"));
      return absl::OkStatus();
    case kFixed32:
      if (!cursor.Skip(4)) return Malformed(tag_offset, absl::StrCat("field ", field, " is truncated"));
      return absl::OkStatus();
    case kLengthDelimited: {
      uint64_t length;
      if (!cursor.ReadVarint(&length)) {
        return Malformed(tag_offset, absl::StrCat("field ", field, " has a truncated length"));
      }
      if (!cursor.Skip(length)) {
        return Malformed(tag_offset, absl::StrCat("field ", field, " declares ", length,
                                                  " bytes but only ", cursor.remaining(),
                                                  " remain"));
      }
      return absl::OkStatus();
    }
    default:
      return Malformed(tag_offset,
                       absl::StrCat("field ", field, " has unsupported wire type ", wire_type));
  }
}

// Reads shape[0] (field 3) from an InferInputTensor; packed or not.
absl::Status ScanLeadingDim(SegmentCursor cursor, std::optional<int64_t>* dim) {
  while (!cursor.at_end()) {
    const uint64_t tag_offset = cursor.offset();
    uint64_t tag;
    if (!cursor.ReadVarint(&tag)) return Malformed(tag_offset, "input tensor has a truncated tag");
    const uint64_t field = tag >> 3;
    const int wire_type = static_cast<int>(tag & 7);
    if (field == 3 && wire_type == kVarint) {
      uint64_t v;
      if (!cursor.ReadVarint(&v)) return Malformed(tag_offset, "input tensor shape is truncated");
      if (!*dim) *dim = static_cast<int64_t>(v);
      continue;
    }
    if (field == 3 && wire_type == kLengthDelimited) {
      uint64_t length;
      SegmentCursor packed(std::span<const std::string_view>{}, 0);
      if (!cursor.ReadVarint(&length) || !cursor.Sub(length, &packed)) {
        return Malformed(tag_offset, "input tensor shape is truncated");
      }
      uint64_t v;
      if (!packed.at_end()) {
        if (!packed.ReadVarint(&v)) return Malformed(tag_offset, "input tensor shape is truncated");
        if (!*dim) *dim = static_cast<int64_t>(v);
      }
      continue;
    }
    if (field == 0) return Malformed(tag_offset, "input tensor has field number 0");
    if (auto s = SkipValue(cursor, wire_type, field, tag_offset); !s.ok()) return s;
  }
  return absl::OkStatus();
}

void AppendVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

}  // namespace

absl::StatusOr<ScannedRequest> ScanModelNamedRequest(std::span<const std::string_view> segments,
                                                     bool want_leading_dim, std::string* scratch) {
  uint64_t total = 0;
  for (std::string_view s : segments) total += s.size();
  SegmentCursor cursor(segments, total);
  ScannedRequest result;
  bool seen_first_input = false;
  while (!cursor.at_end()) {
    const uint64_t tag_offset = cursor.offset();
    uint64_t tag;
    if (!cursor.ReadVarint(&tag)) return Malformed(tag_offset, "truncated or over-long field tag");
    const uint64_t field = tag >> 3;
    const int wire_type = static_cast<int>(tag & 7);
    if (field == 0) return Malformed(tag_offset, "field number 0 is not allowed");
    if (field == 1) {
      if (wire_type != kLengthDelimited) {
        return Malformed(tag_offset, absl::StrCat("model name (field 1) has wire type ", wire_type,
                                                  ", expected 2 (length-delimited)"));
      }
      uint64_t length;
      if (!cursor.ReadVarint(&length)) return Malformed(tag_offset, "model name length is truncated");
      if (length > kMaxModelNameBytes) {
        return Malformed(tag_offset, absl::StrCat("model name is ", length, " bytes, more than the ",
                                                  kMaxModelNameBytes, " allowed"));
      }
      if (!cursor.Read(length, scratch, &result.model_name)) {
        return Malformed(tag_offset, absl::StrCat("model name declares ", length,
                                                  " bytes but only ", cursor.remaining(), " remain"));
      }
      continue;
    }
    if (field == 5 && wire_type == kLengthDelimited && want_leading_dim && !seen_first_input) {
      seen_first_input = true;
      uint64_t length;
      SegmentCursor input(std::span<const std::string_view>{}, 0);
      if (!cursor.ReadVarint(&length) || !cursor.Sub(length, &input)) {
        return Malformed(tag_offset, "first input tensor is truncated");
      }
      if (auto s = ScanLeadingDim(input, &result.first_input_leading_dim); !s.ok()) return s;
      continue;
    }
    if (auto s = SkipValue(cursor, wire_type, field, tag_offset); !s.ok()) return s;
  }
  if (!IsValidUtf8(result.model_name)) {
    return absl::InvalidArgumentError("malformed request message: model name is not valid UTF-8");
  }
  return result;
}

std::string EncodeModelOverride(std::string_view model_name) {
  std::string out;
  out.reserve(model_name.size() + 8);
  out.push_back(static_cast<char>(1 << 3 | kLengthDelimited));
  AppendVarint(&out, model_name.size());
  out.append(model_name);
  out.push_back(static_cast<char>(2 << 3 | kLengthDelimited));
  out.push_back(0);
  return out;
}

}  // namespace carbon::sidecar
