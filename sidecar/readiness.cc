#include "sidecar/readiness.h"

#include "absl/synchronization/blocking_counter.h"

namespace carbon::sidecar {

UpstreamReadiness::UpstreamReadiness(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout)
    : stub_(inference::GRPCInferenceService::NewStub(std::move(channel))), timeout_(timeout) {}

ReadinessAnswer UpstreamReadiness::Ask(const std::vector<std::string>& names) {
  struct Question {
    grpc::ClientContext ctx;
    inference::ModelReadyRequest request;
    inference::ModelReadyResponse response;
    grpc::Status status;
    absl::Time answered_at;
  };
  std::vector<Question> questions(names.size());
  absl::BlockingCounter answered(static_cast<int>(names.size()));
  const absl::Time asked_at = absl::Now();
  const auto deadline = absl::ToChronoTime(asked_at + timeout_);
  for (size_t i = 0; i < names.size(); ++i) {
    Question& q = questions[i];
    q.ctx.set_deadline(deadline);
    q.request.set_name(names[i]);
    stub_->async()->ModelReady(&q.ctx, &q.request, &q.response, [&q, &answered](grpc::Status s) {
      q.status = std::move(s);
      q.answered_at = absl::Now();
      answered.DecrementCount();
    });
  }
  answered.Wait();
  ReadinessAnswer answer;
  answer.ready.resize(names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    const grpc::Status& s = questions[i].status;
    if (s.ok()) {
      answer.ready[i] = questions[i].response.ready();
    } else if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
      answer.ready[i] = false;
    } else {
      continue;
    }
    const absl::Duration took = questions[i].answered_at - asked_at;
    answer.round_trip = std::min(answer.round_trip.value_or(took), took);
  }
  return answer;
}

}  // namespace carbon::sidecar
