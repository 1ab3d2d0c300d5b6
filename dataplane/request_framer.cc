#include "dataplane/request_framer.h"

#include <zlib.h>

#include <algorithm>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace carbon::dataplane {
namespace {

// Empties a buffer; one that held a whole message gives its memory back (a call, or a worker
// thread, would otherwise keep the largest message it ever held for as long as it lives).
void Forget(std::string* buffer) {
  constexpr size_t kKeptCapacity = 64 * 1024;
  if (buffer->capacity() > kKeptCapacity) {
    std::string().swap(*buffer);
  } else {
    buffer->clear();
  }
}

constexpr int kVarint = 0;
constexpr int kFixed64 = 1;
constexpr int kLengthDelimited = 2;
constexpr int kFixed32 = 5;
constexpr int kMaxVarintBytes = 10;

absl::Status Malformed(uint64_t offset, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("malformed request message at byte ", offset, ": ",
                                                 absl::string_view(what.data(), what.size())));
}

}  // namespace

MessageEncoding ParseMessageEncoding(std::string_view grpc_encoding) {
  if (grpc_encoding.empty() || grpc_encoding == "identity") return MessageEncoding::kIdentity;
  if (grpc_encoding == "gzip") return MessageEncoding::kGzip;
  if (grpc_encoding == "deflate") return MessageEncoding::kDeflate;
  return MessageEncoding::kUnsupported;
}

void RequestFramer::FieldWalker::Reset(uint64_t message_length, uint64_t max_name_bytes) {
  *this = FieldWalker();
  length_ = message_length;
  max_name_bytes_ = max_name_bytes;
}

absl::Status RequestFramer::FieldWalker::Step(const char* p, size_t n, size_t* used, Event* event) {
  *event = Event::kNone;
  size_t i = 0;
  const auto left = [this] { return length_ - offset_; };
  while (i < n) {
    switch (state_) {
      case State::kTag:
      case State::kLength:
      case State::kVarint: {
        if (state_ == State::kTag && varint_bytes_ == 0) field_start_ = offset_;
        const auto byte = static_cast<uint8_t>(p[i++]);
        ++offset_;
        if (varint_bytes_ < 10) varint_ |= static_cast<uint64_t>(byte & 0x7f) << (7 * varint_bytes_);
        if (++varint_bytes_ > kMaxVarintBytes) {
          if (state_ == State::kTag) return Malformed(field_start_, "truncated or over-long field tag");
          return Malformed(field_start_, state_ == State::kLength
                                             ? absl::StrCat("field ", field_, " has a truncated length")
                                             : absl::StrCat("field ", field_, " has a truncated or over-long varint"));
        }
        if (byte & 0x80) {
          if (offset_ == length_) {
            if (state_ == State::kTag) return Malformed(field_start_, "truncated or over-long field tag");
            if (state_ == State::kLength) {
              return Malformed(field_start_, field_ == 1 ? std::string("model name length is truncated")
                                                         : absl::StrCat("field ", field_, " has a truncated length"));
            }
            return Malformed(field_start_, absl::StrCat("field ", field_, " has a truncated or over-long varint"));
          }
          continue;
        }
        const uint64_t value = varint_;
        varint_ = 0;
        varint_bytes_ = 0;
        if (state_ == State::kVarint) {
          state_ = State::kTag;
          *used = i;
          *event = Event::kFieldEnd;
          return absl::OkStatus();
        }
        if (state_ == State::kLength) {
          if (field_ == 1 && value > max_name_bytes_) {
            return Malformed(field_start_, absl::StrCat("model name is ", value, " bytes, more than the ",
                                                        max_name_bytes_, " allowed"));
          }
          if (value > left()) {
            return Malformed(field_start_, absl::StrCat(field_ == 1 ? std::string("model name")
                                                                    : absl::StrCat("field ", field_),
                                                        " declares ", value, " bytes but only ", left(), " remain"));
          }
          remaining_ = value;
          state_ = State::kSkip;
          if (value == 0) {
            state_ = State::kTag;
            *used = i;
            *event = Event::kFieldEnd;
            return absl::OkStatus();
          }
          continue;
        }
        // A tag.
        const uint64_t field = value >> 3;
        const int wire_type = static_cast<int>(value & 7);
        if (field == 0) return Malformed(field_start_, "field number 0 is not allowed");
        if (field > (uint64_t{1} << 29) - 1) return Malformed(field_start_, "truncated or over-long field tag");
        field_ = static_cast<uint32_t>(field);
        if (field_ == 1 && wire_type != kLengthDelimited) {
          return Malformed(field_start_, absl::StrCat("model name (field 1) has wire type ", wire_type,
                                                      ", expected 2 (length-delimited)"));
        }
        switch (wire_type) {
          case kVarint:
            state_ = State::kVarint;
            break;
          case kFixed64:
          case kFixed32:
            remaining_ = wire_type == kFixed64 ? 8 : 4;
            if (remaining_ > left()) return Malformed(field_start_, absl::StrCat("field ", field_, " is truncated"));
            state_ = State::kFixed;
            break;
          case kLengthDelimited:
            state_ = State::kLength;
            break;
          default:
            return Malformed(field_start_, absl::StrCat("field ", field_, " has unsupported wire type ", wire_type));
        }
        if (state_ != State::kTag && left() == 0) {
          return Malformed(field_start_, state_ == State::kLength
                                             ? (field_ == 1 ? std::string("model name length is truncated")
                                                            : absl::StrCat("field ", field_, " has a truncated length"))
                                             : absl::StrCat("field ", field_, " is truncated"));
        }
        *used = i;
        *event = Event::kTag;
        return absl::OkStatus();
      }
      case State::kFixed:
      case State::kSkip: {
        const size_t take = static_cast<size_t>(std::min<uint64_t>(remaining_, n - i));
        i += take;
        offset_ += take;
        remaining_ -= take;
        if (remaining_ == 0) {
          state_ = State::kTag;
          *used = i;
          *event = Event::kFieldEnd;
          return absl::OkStatus();
        }
        break;
      }
    }
  }
  *used = i;
  return absl::OkStatus();
}

bool RequestFramer::RoutesNext() const {
  switch (options_.route) {
    case Options::Route::kNone:
      return false;
    case Options::Route::kFirst:
      return messages_ == 0;
    case Options::Route::kEvery:
      return true;
  }
  return false;
}

absl::Status RequestFramer::StartMessage(Sink sink) {
  const auto flag = static_cast<uint8_t>(prefix_[0]);
  length_ = static_cast<uint32_t>(static_cast<uint8_t>(prefix_[1])) << 24 |
            static_cast<uint32_t>(static_cast<uint8_t>(prefix_[2])) << 16 |
            static_cast<uint32_t>(static_cast<uint8_t>(prefix_[3])) << 8 | static_cast<uint8_t>(prefix_[4]);
  remaining_ = length_;
  prefix_have_ = 0;
  if (length_ > options_.max_message_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("the request message is ", length_,
                                                     " bytes, more than max_message_bytes (",
                                                     options_.max_message_bytes, ")"));
  }
  if (flag > 1) return absl::InternalError(absl::StrCat("invalid gRPC message flag ", flag));
  if (!RoutesNext()) {
    sink(std::string_view(prefix_.data(), prefix_.size()));
    state_ = State::kPass;
    if (remaining_ == 0) EndMessage(sink);
    return absl::OkStatus();
  }
  held_.clear();
  walked_ = 0;
  seen_name_ = false;
  seen_input_ = false;
  if (flag == 1) {
    if (options_.encoding == MessageEncoding::kIdentity) {
      return absl::InternalError("a compressed message on a call without grpc-encoding");
    }
    if (options_.encoding == MessageEncoding::kUnsupported) {
      return absl::UnimplementedError("the sidecar decompresses only gzip and deflate messages to route them");
    }
    state_ = State::kWhole;
  } else {
    walker_.Reset(length_, options_.max_model_name_bytes);
    state_ = State::kHead;
  }
  return absl::OkStatus();
}

absl::Status RequestFramer::Feed(std::string_view bytes, Decide decide, Sink sink) {
  if (state_ == State::kFailed) return absl::FailedPreconditionError("the request body already failed");
  absl::Status status;
  while (status.ok() && !bytes.empty()) {
    switch (state_) {
      case State::kPrefix: {
        const size_t take = std::min(bytes.size(), prefix_.size() - prefix_have_);
        std::copy_n(bytes.data(), take, prefix_.data() + prefix_have_);
        prefix_have_ += take;
        bytes.remove_prefix(take);
        if (prefix_have_ == prefix_.size()) {
          status = StartMessage(sink);
          // A routed message of 0 bytes is decided at once (it names no model).
          if (status.ok() && state_ == State::kHead && remaining_ == 0) status = DecideAndRelease(0, decide, sink);
          if (status.ok() && state_ == State::kWhole && remaining_ == 0) status = ReleaseWhole(decide, sink);
        }
        break;
      }
      case State::kPass: {
        const size_t take = static_cast<size_t>(std::min<uint64_t>(bytes.size(), remaining_));
        sink(bytes.substr(0, take));
        bytes.remove_prefix(take);
        remaining_ -= take;
        if (remaining_ == 0) EndMessage(sink);
        break;
      }
      case State::kHead:
        status = FeedHead(&bytes, decide, sink);
        break;
      case State::kTail:
        status = FeedTail(&bytes, sink);
        break;
      case State::kWhole: {
        const size_t take = static_cast<size_t>(std::min<uint64_t>(bytes.size(), remaining_));
        held_.append(bytes.data(), take);
        bytes.remove_prefix(take);
        remaining_ -= take;
        if (remaining_ == 0) status = ReleaseWhole(decide, sink);
        break;
      }
      case State::kFailed:
        break;
    }
  }
  if (!status.ok()) state_ = State::kFailed;
  return status;
}

absl::Status RequestFramer::DecideAndWritePrefix(std::string_view head, uint64_t body_length, Decide decide,
                                                Sink sink) {
  auto append = decide(head);
  if (!append.ok()) return append.status();
  append_.assign(append->data(), append->size());
  const uint64_t length = body_length + append_.size();
  if (length > std::numeric_limits<uint32_t>::max()) {
    return absl::ResourceExhaustedError("the rewritten request message is over 4 GiB");
  }
  const char prefix[5] = {0, static_cast<char>(length >> 24), static_cast<char>(length >> 16),
                          static_cast<char>(length >> 8), static_cast<char>(length)};
  sink(std::string_view(prefix, sizeof prefix));
  return absl::OkStatus();
}

absl::Status RequestFramer::ReleaseWhole(Decide decide, Sink sink) {
  thread_local std::string inflated;
  absl::Status s = Inflate(&inflated);
  if (s.ok()) s = DecideAndWritePrefix(inflated, inflated.size(), decide, sink);
  if (s.ok()) sink(inflated);
  Forget(&inflated);
  if (!s.ok()) return s;
  Forget(&held_);
  EndMessage(sink);
  return absl::OkStatus();
}

absl::Status RequestFramer::FeedHead(std::string_view* bytes, Decide decide, Sink sink) {
  const size_t take = static_cast<size_t>(std::min<uint64_t>(bytes->size(), remaining_));
  held_.append(bytes->data(), take);
  bytes->remove_prefix(take);
  remaining_ -= take;
  while (walked_ < held_.size()) {
    size_t used = 0;
    FieldWalker::Event event;
    if (absl::Status s = walker_.Step(held_.data() + walked_, held_.size() - walked_, &used, &event); !s.ok()) {
      return s;
    }
    walked_ += used;
    if (event == FieldWalker::Event::kTag) {
      if (seen_name_ && walker_.field() > 5) return DecideAndRelease(walker_.field_start(), decide, sink);
      if (walker_.field() == 1) seen_name_ = true;
    } else if (event == FieldWalker::Event::kFieldEnd) {
      if (walker_.field() == 5) seen_input_ = true;
      if (seen_name_ && seen_input_) return DecideAndRelease(walker_.offset(), decide, sink);
    }
  }
  if (remaining_ == 0) return DecideAndRelease(held_.size(), decide, sink);
  return absl::OkStatus();
}

absl::Status RequestFramer::DecideAndRelease(size_t head_length, Decide decide, Sink sink) {
  if (absl::Status s = DecideAndWritePrefix(std::string_view(held_.data(), head_length), length_, decide, sink);
      !s.ok()) {
    return s;
  }
  // What was held past the head is checked like the rest of the message.
  std::string_view past_head(held_.data() + walked_, held_.size() - walked_);
  sink(std::string_view(held_.data(), walked_));
  state_ = State::kTail;
  const uint64_t rest = remaining_;
  remaining_ = past_head.size();
  absl::Status s = FeedTail(&past_head, sink);
  Forget(&held_);
  if (!s.ok()) return s;
  if (state_ == State::kTail) remaining_ = rest;
  return absl::OkStatus();
}

absl::Status RequestFramer::FeedTail(std::string_view* bytes, Sink sink) {
  const size_t take = static_cast<size_t>(std::min<uint64_t>(bytes->size(), remaining_));
  size_t walked = 0;
  while (walked < take) {
    size_t used = 0;
    FieldWalker::Event event;
    if (absl::Status s = walker_.Step(bytes->data() + walked, take - walked, &used, &event); !s.ok()) return s;
    walked += used;
    if (event == FieldWalker::Event::kTag && walker_.field() == 1) {
      return Malformed(walker_.field_start(), "a second model name (field 1) after the sidecar routed on the first");
    }
  }
  sink(bytes->substr(0, take));
  bytes->remove_prefix(take);
  remaining_ -= take;
  if (remaining_ == 0 && walker_.offset() == length_) {
    if (!walker_.between_fields()) return Malformed(walker_.field_start(), "the last field is truncated");
    EndMessage(sink);
  }
  return absl::OkStatus();
}

void RequestFramer::EndMessage(Sink sink) {
  if (!append_.empty()) sink(append_);
  append_.clear();
  ++messages_;
  state_ = State::kPrefix;
}

absl::Status RequestFramer::Finish() const {
  if (state_ == State::kFailed) return absl::OkStatus();  // already reported
  if (state_ == State::kPrefix && prefix_have_ == 0) return absl::OkStatus();
  // Passed on or not, a cut message is an error the sidecar reports itself: swallowing a partial
  // prefix would show the upstream a clean end instead.
  if (state_ == State::kPrefix) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request ended inside a message prefix (", prefix_have_, " of 5 bytes)"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("the request ended inside a message (", length_ - remaining_, " of ", length_, " bytes)"));
}

absl::Status RequestFramer::Inflate(std::string* out) const {
  out->clear();
  z_stream z{};
  // 16 + MAX_WBITS: a gzip header and trailer; MAX_WBITS: a zlib stream (HTTP's "deflate").
  if (inflateInit2(&z, options_.encoding == MessageEncoding::kGzip ? 16 + MAX_WBITS : MAX_WBITS) != Z_OK) {
    return absl::InternalError("zlib could not start");
  }
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(held_.data()));
  z.avail_in = static_cast<uInt>(held_.size());
  int rc = Z_OK;
  while (rc == Z_OK) {
    if (out->size() >= options_.max_message_bytes) {
      inflateEnd(&z);
      return absl::ResourceExhaustedError(absl::StrCat("the decompressed request message is more than max_message_bytes (",
                                                       options_.max_message_bytes, ")"));
    }
    const size_t have = out->size();
    const size_t grow = std::min<size_t>(std::max<size_t>(held_.size() * 4, 4096), options_.max_message_bytes + 1 - have);
    out->resize(have + grow);
    z.next_out = reinterpret_cast<Bytef*>(out->data() + have);
    z.avail_out = static_cast<uInt>(grow);
    rc = inflate(&z, Z_NO_FLUSH);
    out->resize(have + grow - z.avail_out);
    if (rc == Z_BUF_ERROR && z.avail_in == 0) break;
  }
  inflateEnd(&z);
  if (rc != Z_STREAM_END) {
    return absl::InvalidArgumentError(absl::StrCat("the compressed request message does not decompress (zlib: ",
                                                   z.msg != nullptr ? z.msg : "truncated", ")"));
  }
  if (out->size() > options_.max_message_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("the decompressed request message is more than max_message_bytes (",
                                                     options_.max_message_bytes, ")"));
  }
  return absl::OkStatus();
}

}  // namespace carbon::dataplane
