#include "trainer/metrics/run_report.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "trainer/io/atomic_file.h"

namespace prefopt::metrics {
namespace {

// One metric over the run: its finite points and how many nulls were logged.
struct Series {
  std::vector<std::pair<double, double>> points;  // (step, value)
  int non_finite = 0;
};

// Chart geometry in SVG pixels: the plot area is [kLeft, kWidth - kRight] x
// [kTop, kHeight - kBottom].
constexpr double kWidth = 560, kHeight = 290;
constexpr double kLeft = 72, kRight = 18, kTop = 52, kBottom = 42;
constexpr char kLineColor[] = "#1f77b4";

std::string Escape(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string Value(double v) { return absl::StrFormat("%.6g", v); }

std::string StepText(double step) { return absl::StrFormat("%.0f", step); }

// A tick label with as many decimals as the tick spacing needs, so that
// neighbouring labels always differ.
std::string TickLabel(double v, double spacing) {
  if (std::abs(v) < spacing * 1e-6) v = 0;  // -0 and rounding noise
  if (spacing >= 1e-6 && std::abs(v) < 1e6) {
    const int decimals =
        std::max(0, static_cast<int>(std::ceil(-std::log10(spacing) - 1e-9)));
    return absl::StrFormat("%.*f", decimals, v);
  }
  return absl::StrFormat("%.3g", v);
}

// Reads metrics.jsonl into one series per metric; `steps` gets the distinct
// steps logged (an evaluation line may share its step with a training line).
absl::Status ReadMetrics(const std::string& path,
                         std::map<std::string, Series>* metrics,
                         std::set<double>* steps) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat(path, ": cannot open the metrics log for the report"));
  }
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const nlohmann::json obj = nlohmann::json::parse(line, nullptr, false);
    if (obj.is_discarded() || !obj.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", number, ": not a JSON object"));
    }
    auto step = obj.find("step");
    if (step == obj.end() || !step->is_number()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", number, ": no numeric \"step\""));
    }
    const double x = step->get<double>();
    for (const auto& [name, v] : obj.items()) {
      if (name == "step") continue;
      if (v.is_null()) {
        ++(*metrics)[name].non_finite;
      } else if (v.is_number()) {
        (*metrics)[name].points.emplace_back(x, v.get<double>());
      }
    }
    steps->insert(x);
  }
  if (in.bad()) {
    return absl::InternalError(absl::StrCat(path, ": read failed"));
  }
  return absl::OkStatus();
}

bool IsConstant(const Series& s) {
  for (const auto& p : s.points) {
    if (p.second != s.points.front().second) return false;
  }
  return true;
}

// The points of `s` with the lowest and highest values (first ones on ties).
std::pair<size_t, size_t> MinMaxIndex(const Series& s) {
  size_t lo = 0, hi = 0;
  for (size_t i = 1; i < s.points.size(); ++i) {
    if (s.points[i].second < s.points[lo].second) lo = i;
    if (s.points[i].second > s.points[hi].second) hi = i;
  }
  return {lo, hi};
}

std::string Chart(const std::string& name, const Series& s) {
  const auto [min_i, max_i] = MinMaxIndex(s);
  const double y_min = s.points[min_i].second, y_max = s.points[max_i].second;
  double x_lo = s.points.front().first, x_hi = x_lo;
  for (const auto& p : s.points) {
    x_lo = std::min(x_lo, p.first);
    x_hi = std::max(x_hi, p.first);
  }
  if (x_hi == x_lo) x_hi = x_lo + 1;
  const std::vector<double> y_ticks = AxisTicks(y_min, y_max, 5);
  const double y_lo = y_ticks.front(), y_hi = y_ticks.back();
  const double plot_w = kWidth - kLeft - kRight;
  const double plot_h = kHeight - kTop - kBottom;
  auto px = [&](double x) {
    return kLeft + (x - x_lo) / (x_hi - x_lo) * plot_w;
  };
  auto py = [&](double y) {
    return kTop + plot_h - (y - y_lo) / (y_hi - y_lo) * plot_h;
  };

  const std::string title = Escape(name);
  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" "
      "height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" role=\"img\">"
      "<title>%s</title>\n",
      kWidth, kHeight, kWidth, kHeight, title);
  absl::StrAppendFormat(&svg,
                        "<text x=\"%.0f\" y=\"20\" class=\"title\">%s</text>\n",
                        kLeft, title);
  std::string summary = absl::StrCat(
      "min ", Value(y_min), " (step ", StepText(s.points[min_i].first),
      ")  max ", Value(y_max), " (step ", StepText(s.points[max_i].first),
      ")  last ", Value(s.points.back().second));
  if (s.non_finite > 0) {
    absl::StrAppend(&summary, "  (", s.non_finite, " non-finite left out)");
  }
  absl::StrAppendFormat(&svg,
                        "<text x=\"%.0f\" y=\"38\" class=\"sub\">%s</text>\n",
                        kLeft, summary);

  // Horizontal grid lines with the y tick labels.
  const double y_spacing = y_ticks.size() > 1 ? y_ticks[1] - y_ticks[0] : 1;
  for (double t : y_ticks) {
    absl::StrAppendFormat(
        &svg,
        "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
        "class=\"grid\"/><text x=\"%.1f\" y=\"%.1f\" class=\"ytick\">%s"
        "</text>\n",
        kLeft, py(t), kWidth - kRight, py(t), kLeft - 6, py(t) + 4,
        TickLabel(t, y_spacing));
  }
  // X ticks: whole steps only, inside the logged range.
  std::vector<double> x_ticks = AxisTicks(x_lo, x_hi, 6);
  const double x_spacing =
      std::max(1.0, x_ticks.size() > 1 ? x_ticks[1] - x_ticks[0] : 1);
  for (double t : x_ticks) {
    if (t < x_lo || t > x_hi || t != std::floor(t)) continue;
    absl::StrAppendFormat(
        &svg,
        "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
        "class=\"axis\"/><text x=\"%.1f\" y=\"%.1f\" class=\"xtick\">%s"
        "</text>\n",
        px(t), kHeight - kBottom, px(t), kHeight - kBottom + 5, px(t),
        kHeight - kBottom + 18, TickLabel(t, x_spacing));
  }
  // The axes and the x axis name.
  absl::StrAppendFormat(
      &svg,
      "<polyline points=\"%.1f,%.1f %.1f,%.1f %.1f,%.1f\" class=\"axis\"/>\n"
      "<text x=\"%.1f\" y=\"%.1f\" class=\"xname\">step</text>\n",
      kLeft, kTop, kLeft, kHeight - kBottom, kWidth - kRight, kHeight - kBottom,
      kLeft + plot_w / 2, kHeight - 6);
  // The data.
  std::string points;
  for (const auto& p : s.points) {
    absl::StrAppendFormat(&points, "%s%.1f,%.1f", points.empty() ? "" : " ",
                          px(p.first), py(p.second));
  }
  absl::StrAppendFormat(&svg,
                        "<polyline points=\"%s\" class=\"data\" "
                        "stroke=\"%s\"/>\n",
                        points, kLineColor);
  for (size_t i : {min_i, max_i}) {
    absl::StrAppendFormat(
        &svg, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n",
        px(s.points[i].first), py(s.points[i].second), kLineColor);
  }
  svg += "</svg>\n";
  return svg;
}

constexpr char kStyle[] = R"css(
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif;
       margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 28px 0 10px; border-bottom: 1px solid #ddd; }
.meta { color: #666; font-size: 13px; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
.charts svg { border: 1px solid #e4e4e4; border-radius: 4px; }
svg text { font-family: inherit; fill: #333; }
svg .title { font-size: 15px; font-weight: 600; }
svg .sub { font-size: 11px; fill: #666; }
svg .ytick { font-size: 11px; text-anchor: end; }
svg .xtick, svg .xname { font-size: 11px; text-anchor: middle; }
svg .grid { stroke: #eee; stroke-width: 1; }
svg .axis { stroke: #888; stroke-width: 1; fill: none; }
svg .data { fill: none; stroke-width: 1.8; stroke-linejoin: round; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 4px 10px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f6f6; padding: 12px; font-size: 12px; overflow-x: auto; }
)css";

}  // namespace

std::vector<double> AxisTicks(double lo, double hi, int target) {
  // The smallest of 1, 2, 5 and 10 times a power of ten that splits the range
  // into at most `target` steps. The tolerances keep rounding in the
  // divisions from adding a step.
  constexpr double kSlack = 1e-9;
  const double raw = (hi - lo) / std::max(1, target);
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double normalized = raw / magnitude;
  double spacing = 10 * magnitude;
  for (double nice : {1.0, 2.0, 5.0}) {
    if (normalized <= nice + kSlack) {
      spacing = nice * magnitude;
      break;
    }
  }
  // Multiples of the spacing, computed from their index so that no rounding
  // accumulates.
  const double first = std::floor(lo / spacing + kSlack);
  const double last = std::ceil(hi / spacing - kSlack);
  std::vector<double> ticks;
  for (double k = first; k <= last; ++k) ticks.push_back(k * spacing);
  return ticks;
}

absl::Status WriteRunReport(
    const std::string& run_dir, const std::string& config_text,
    const std::vector<std::pair<std::string, std::string>>& eval_table) {
  std::map<std::string, Series> metrics;
  std::set<double> steps;
  absl::Status s = ReadMetrics(run_dir + "/metrics.jsonl", &metrics, &steps);
  if (!s.ok()) return s;

  std::vector<std::string> order;
  if (metrics.count("loss") != 0) order.push_back("loss");
  for (const auto& [name, series] : metrics) {
    if (name != "loss") order.push_back(name);
  }

  std::string html = absl::StrCat(
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
      "<title>prefopt report: ",
      Escape(run_dir), "</title>\n<style>", kStyle,
      "</style>\n</head>\n<body>\n<h1>prefopt run report</h1>\n"
      "<div class=\"meta\">",
      Escape(run_dir), " &middot; ", steps.size(), " logged steps");
  if (!steps.empty()) {
    absl::StrAppend(&html, ", the last at step ", StepText(*steps.rbegin()));
  }
  html += "</div>\n<h2>Training curves</h2>\n<div class=\"charts\">\n";
  int charts = 0;
  for (const std::string& name : order) {
    const Series& series = metrics[name];
    if (series.points.empty() || IsConstant(series)) continue;
    html += Chart(name, series);
    ++charts;
  }
  html += "</div>\n";
  if (charts == 0) html += "<p>No metric changed during the run.</p>\n";

  html +=
      "<h2>Final values</h2>\n<table>\n<tr><th>metric</th><th>last</th>"
      "<th>min</th><th>max</th></tr>\n";
  for (const std::string& name : order) {
    const Series& series = metrics[name];
    if (series.points.empty()) {
      absl::StrAppend(&html, "<tr><td>", Escape(name),
                      "</td><td colspan=\"3\">never finite</td></tr>\n");
      continue;
    }
    const auto [min_i, max_i] = MinMaxIndex(series);
    absl::StrAppend(
        &html, "<tr><td>", Escape(name), "</td><td class=\"num\">",
        Value(series.points.back().second), "</td>",
        IsConstant(series)
            ? "<td colspan=\"2\">constant</td>"
            : absl::StrCat("<td class=\"num\">",
                           Value(series.points[min_i].second),
                           "</td><td class=\"num\">",
                           Value(series.points[max_i].second), "</td>"),
        "</tr>\n");
  }
  html += "</table>\n<h2>Evaluation</h2>\n";
  if (eval_table.empty()) {
    html += "<p>No evaluation in this run.</p>\n";
  } else {
    html += "<table>\n<tr><th>metric</th><th>value</th></tr>\n";
    for (const auto& [name, value] : eval_table) {
      absl::StrAppend(&html, "<tr><td>", Escape(name),
                      "</td><td class=\"num\">", Escape(value), "</td></tr>\n");
    }
    html += "</table>\n";
  }
  absl::StrAppend(&html, "<h2>Config</h2>\n<pre>", Escape(config_text),
                  "</pre>\n</body>\n</html>\n");
  return io::WriteFileAtomically(run_dir + "/report.html", html);
}

}  // namespace prefopt::metrics
