#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace carbon::dataplane {

// How the messages of a request body are compressed (the call's grpc-encoding header).
enum class MessageEncoding { kIdentity, kGzip, kDeflate, kUnsupported };
MessageEncoding ParseMessageEncoding(std::string_view grpc_encoding);

// Follows the length-prefixed messages of one gRPC request body (HTTP/2 DATA, arriving in pieces of
// any size) and passes them on, rewriting the messages that are routed without holding them whole.
//
// A routed message is held only until its head is known: its top-level fields up to and including
// field 1 (the model name) and field 5 (the first input tensor, whose shape gives the batch size),
// or up to the first field numbered above 5 — Triton's and KServe's clients write fields in number
// order, so this is a few hundred bytes. The head is handed to `decide`, which returns the bytes to
// append to the message (a later field 1 overrides an earlier one, so appending is a rewrite); then
// the 5-byte prefix is written with the length corrected, the head, and the rest of the message
// streamed through as it arrives, then the appended bytes. When field 1 comes late, the message is
// held until its end (bounded by max_message_bytes) and decided whole. A compressed routed message
// (prefix flag 1) is held whole, decompressed (gzip or deflate, zlib) and passed on uncompressed
// with the flag cleared, which the gRPC protocol allows. Messages that are not routed pass through
// as they come, only their prefix read (for max_message_bytes).
//
// The fields streamed after the head are still checked as they pass: a truncated field, a bad wire
// type or a second field 1 ends the call (the upstream never sees the message's end, since its
// appended bytes and last frame are not sent). No I/O, no threads: one per call, fuzzed with
// arbitrary bodies (tests/fuzz/request_framer_fuzz.cc).
class RequestFramer {
 public:
  struct Options {
    // Which messages are routed: none, the first only (unary methods), or every one (streams).
    enum class Route { kNone, kFirst, kEvery };
    Route route = Route::kNone;
    uint32_t max_message_bytes = 64u << 20;
    MessageEncoding encoding = MessageEncoding::kIdentity;
    // A longer model name is refused as soon as its length is read (sidecar: kMaxModelNameBytes).
    uint64_t max_model_name_bytes = 1024;
  };
  // Given a routed message's head (whole top-level fields, field 1 among them if the message has
  // one), the bytes to append to the message; an error ends the call with that status.
  using Decide = absl::FunctionRef<absl::StatusOr<std::string_view>(std::string_view head)>;
  // Takes bytes to pass on, in order; they are valid only during the call.
  using Sink = absl::FunctionRef<void(std::string_view bytes)>;

  explicit RequestFramer(Options options) : options_(options) {}

  // Takes the next piece of the body. Errors: RESOURCE_EXHAUSTED for a message over
  // max_message_bytes, INVALID_ARGUMENT for a routed message that is not a valid request (with the
  // byte offset in the message), UNIMPLEMENTED for an unsupported compression, INTERNAL for a bad
  // prefix; and whatever `decide` returns. After an error the framer takes nothing more.
  absl::Status Feed(std::string_view bytes, Decide decide, Sink sink);
  // The body ended: an error (INVALID_ARGUMENT) when it ended inside a message.
  absl::Status Finish() const;

  // Bytes held now (a routed message's head, or a compressed message), for memory accounting.
  size_t held_bytes() const { return held_.size(); }
  // Messages seen to their end.
  uint64_t messages() const { return messages_; }

 private:
  // Walks protobuf top-level fields one byte or one skip at a time, so a field may be split
  // across any number of pieces.
  class FieldWalker {
   public:
    enum class Event { kNone, kTag, kFieldEnd };
    // Consumes up to `n` bytes of `p`; stops after a tag is complete or a field ends (and reports
    // which), or when the bytes run out. `*used` is how many were consumed. An error says what is
    // wrong at which offset.
    absl::Status Step(const char* p, size_t n, size_t* used, Event* event);
    void Reset(uint64_t message_length, uint64_t max_name_bytes);
    uint32_t field() const { return field_; }
    uint64_t offset() const { return offset_; }          // bytes of the message consumed so far
    uint64_t field_start() const { return field_start_; }  // offset of the current field's tag
    bool between_fields() const { return state_ == State::kTag && varint_bytes_ == 0; }

   private:
    enum class State { kTag, kLength, kVarint, kFixed, kSkip };
    State state_ = State::kTag;
    uint64_t varint_ = 0;
    int varint_bytes_ = 0;
    uint32_t field_ = 0;
    uint64_t remaining_ = 0;  // of a fixed or length-delimited field's value
    uint64_t offset_ = 0;
    uint64_t field_start_ = 0;
    uint64_t length_ = 0;
    uint64_t max_name_bytes_ = 0;
  };

  enum class State { kPrefix, kPass, kHead, kTail, kWhole, kFailed };
  bool RoutesNext() const;
  absl::Status StartMessage(Sink sink);
  absl::Status FeedHead(std::string_view* bytes, Decide decide, Sink sink);
  absl::Status FeedTail(std::string_view* bytes, Sink sink);
  // Decides on the first `head_length` held bytes, then passes on the new prefix and everything held.
  absl::Status DecideAndRelease(size_t head_length, Decide decide, Sink sink);
  // Asks `decide` about `head`, remembers what to append, and passes on the uncompressed prefix for
  // a body of `body_length` bytes plus that.
  absl::Status DecideAndWritePrefix(std::string_view head, uint64_t body_length, Decide decide, Sink sink);
  // A compressed message held whole: decompressed, decided, passed on uncompressed.
  absl::Status ReleaseWhole(Decide decide, Sink sink);
  absl::Status Inflate(std::string* out) const;
  void EndMessage(Sink sink);

  Options options_;
  State state_ = State::kPrefix;
  std::array<char, 5> prefix_{};
  size_t prefix_have_ = 0;
  uint32_t length_ = 0;       // of the current message, as its prefix says
  uint64_t remaining_ = 0;    // of the current message not yet fed
  std::string held_;          // a routed message's head (or all of a compressed one)
  size_t walked_ = 0;         // of held_, by walker_
  FieldWalker walker_;
  bool seen_name_ = false;    // field 1 in the current message's head
  bool seen_input_ = false;   // field 5 complete in the current message's head
  std::string append_;        // the decided bytes to append at the message's end
  uint64_t messages_ = 0;
};

}  // namespace carbon::dataplane
