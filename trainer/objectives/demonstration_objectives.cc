#include "trainer/objectives/demonstration_objectives.h"

#include "absl/types/span.h"
#include "trainer/objectives/sft.h"

namespace prefopt::objectives {

double ResponseTokens(const std::vector<data::Example>& examples,
                      const std::vector<int>& batch) {
  double tokens = 0;
  for (int i : batch) tokens += static_cast<double>(examples[i].chosen.size());
  return tokens;
}

void SftPlugin::Coefficients(const MicroBatchView& batch, double denominator,
                             std::vector<float>* coef, MetricSums* sums) const {
  coef->clear();
  for (const SequenceScores& s : *batch.scores) {
    SftSequence(s, denominator, sums, coef);
  }
}

absl::StatusOr<std::unique_ptr<PriorPlugin>> PriorPlugin::Create(
    const PriorConfig& config) {
  PriorOptions options;
  options.alpha = config.alpha();
  options.weight_sum_floor = config.weight_sum_floor();
  auto prior = PriorObjective::Create(options);
  if (!prior.ok()) return prior.status();
  return std::unique_ptr<PriorPlugin>(
      new PriorPlugin(*std::move(prior), options));
}

bool PriorPlugin::DeviceParams(kernels::ObjectiveParams* params) const {
  kernels::ObjectiveParams p;
  p.kind = kernels::ObjectiveKind::kPrior;
  p.prior_alpha = options_.alpha;
  p.weight_sum_floor = options_.weight_sum_floor;
  *params = p;
  return true;
}

void PriorPlugin::Coefficients(const MicroBatchView& batch, double denominator,
                               std::vector<float>* coef,
                               MetricSums* sums) const {
  coef->clear();
  size_t row = 0;
  for (size_t i = 0; i < batch.scores->size(); ++i) {
    const SequenceScores& s = (*batch.scores)[i];
    const absl::Span<const float> logp(batch.row_logp->data() + row, s.tokens);
    prior_.Sequence(s, logp,
                    batch.reference->TokenLogps((*batch.examples)[i], 0),
                    denominator, sums, coef);
    row += s.tokens;
  }
}

namespace {

absl::StatusOr<Divergence> DivergenceOf(ImplicitSftConfig::Divergence d) {
  switch (d) {
    case ImplicitSftConfig::TOTAL_VARIATION:
      return Divergence::kTotalVariation;
    case ImplicitSftConfig::PEARSON_CHI2:
      return Divergence::kPearsonChi2;
    case ImplicitSftConfig::NEYMAN_CHI2:
      return Divergence::kNeymanChi2;
    case ImplicitSftConfig::KL:
      return Divergence::kKl;
    case ImplicitSftConfig::SQUARED_HELLINGER:
      return Divergence::kSquaredHellinger;
    case ImplicitSftConfig::JENSEN_SHANNON:
      return Divergence::kJensenShannon;
    default:
      return absl::InvalidArgumentError(
          "objective.implicit_sft.divergence: must be set");
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<ImplicitSftPlugin>> ImplicitSftPlugin::Create(
    const ImplicitSftConfig& config) {
  auto divergence = DivergenceOf(config.divergence());
  if (!divergence.ok()) return divergence.status();
  ImplicitSftOptions options;
  options.divergence = *divergence;
  options.granularity = config.granularity() == ImplicitSftConfig::TOKEN
                            ? Granularity::kToken
                            : Granularity::kSequence;
  options.beta = config.beta();
  options.domain_margin = config.domain_margin();
  auto isft = ImplicitSftObjective::Create(options);
  if (!isft.ok()) return isft.status();
  return std::unique_ptr<ImplicitSftPlugin>(new ImplicitSftPlugin(
      *std::move(isft), options.granularity == Granularity::kToken));
}

void ImplicitSftPlugin::Coefficients(const MicroBatchView& batch,
                                     double denominator,
                                     std::vector<float>* coef,
                                     MetricSums* sums) const {
  coef->clear();
  size_t row = 0;
  for (size_t i = 0; i < batch.scores->size(); ++i) {
    const SequenceScores& s = (*batch.scores)[i];
    const int ex = (*batch.examples)[i];
    const absl::Span<const float> logp(batch.row_logp->data() + row, s.tokens);
    const absl::Span<const float> ref_tokens =
        token_ ? batch.reference->TokenLogps(ex, 0) : absl::Span<const float>();
    isft_.Sequence(s, logp, batch.reference->SequenceLogp(ex, 0), ref_tokens,
                   denominator, sums, coef);
    row += s.tokens;
  }
}

bool ImplicitSftPlugin::DeviceParams(kernels::ObjectiveParams* params) const {
  const ImplicitSftOptions& options = isft_.options();
  kernels::ObjectiveParams p;
  p.kind = token_ ? kernels::ObjectiveKind::kImplicitToken
                  : kernels::ObjectiveKind::kImplicitSequence;
  switch (options.divergence) {
    case Divergence::kTotalVariation:
      p.divergence = kernels::ImplicitDivergence::kTotalVariation;
      break;
    case Divergence::kPearsonChi2:
      p.divergence = kernels::ImplicitDivergence::kPearsonChi2;
      break;
    case Divergence::kNeymanChi2:
      p.divergence = kernels::ImplicitDivergence::kNeymanChi2;
      break;
    case Divergence::kKl:
      p.divergence = kernels::ImplicitDivergence::kKl;
      break;
    case Divergence::kSquaredHellinger:
      p.divergence = kernels::ImplicitDivergence::kSquaredHellinger;
      break;
    case Divergence::kJensenShannon:
      p.divergence = kernels::ImplicitDivergence::kJensenShannon;
      break;
  }
  p.beta = options.beta;
  p.domain_margin = options.domain_margin;
  *params = p;
  return true;
}

}  // namespace prefopt::objectives
