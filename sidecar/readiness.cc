#include "sidecar/readiness.h"

#include "absl/synchronization/blocking_counter.h"

namespace carbon::sidecar {

UpstreamReadiness::UpstreamReadiness(std::shared_ptr<grpc::Channel> channel, absl::Duration timeout)
    : stub_(inference::GRPCInferenceService::NewStub(std::move(channel))), timeout_(timeout) {}

std::vector<std::optional<bool>> UpstreamReadiness::Ask(const std::vector<std::string>& names) {
  struct Question {
    grpc::ClientContext ctx;
    inference::ModelReadyRequest request;
    inference::ModelReadyResponse response;
    grpc::Status status;
  };
  std::vector<Question> questions(names.size());
  absl::BlockingCounter answered(static_cast<int>(names.size()));
  const auto deadline = absl::ToChronoTime(absl::Now() + timeout_);
  for (size_t i = 0; i < names.size(); ++i) {
    Question& q = questions[i];
    q.ctx.set_deadline(deadline);
    q.request.set_name(names[i]);
    stub_->async()->ModelReady(&q.ctx, &q.request, &q.response, [&q, &answered](grpc::Status s) {
      q.status = std::move(s);
      answered.DecrementCount();
    });
  }
  answered.Wait();
  std::vector<std::optional<bool>> ready(names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    const grpc::Status& s = questions[i].status;
    if (s.ok()) {
      ready[i] = questions[i].response.ready();
    } else if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
      ready[i] = false;
    }
  }
  return ready;
}

}  // namespace carbon::sidecar
