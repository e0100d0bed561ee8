// Small SVG line charts (training curves, accuracy by length, cost reports): panels with linear or
// logarithmic axes, a grid, polylines and a legend, written without any dependency.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "engram/core/error.hpp"

ENGRAM_NAMESPACE_BEGIN
namespace svg {

/// One line of a chart.
struct Series {
  std::string name, color;
  bool dashed = false;
  std::vector<std::pair<double, double>> points;  ///< (x, y); non-finite (and, on a log axis, non-positive) points are skipped
};

/// An axis: its label and scale.
struct Axis {
  std::string label;
  bool log = false;
};

/// A colour per series index that stays readable on white.
inline const char* palette(std::size_t i) {
  static const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"};
  return colors[i % (sizeof colors / sizeof colors[0])];
}

namespace detail {
inline std::string num(double x) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f", x);
  return b;
}
inline std::string tick_label(double v, bool log) {
  char b[32];
  if (log) {
    const int e = int(std::lround(std::log10(v)));
    if (e >= 0 && e <= 3) return std::to_string(int(std::lround(v)));
    return "1e" + std::to_string(e);
  }
  std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}
// Range and ticks of one axis over the values vs.
struct Scale {
  bool log = false;
  double lo = 0, hi = 1;
  std::vector<double> ticks;
  double pos(double v) const { return log ? (std::log10(v) - lo) / (hi - lo) : (v - lo) / (hi - lo); }
};
inline Scale make_scale(const std::vector<double>& vs, bool log) {
  Scale s;
  s.log = log;
  double a = 1e300, b = -1e300;
  for (double v : vs) a = std::min(a, v), b = std::max(b, v);
  if (log) {
    s.lo = std::floor(std::log10(a));
    s.hi = std::max(std::ceil(std::log10(b)), s.lo + 1);
    for (double e = s.lo; e <= s.hi; ++e) s.ticks.push_back(std::pow(10.0, e));
  } else {
    if (!(b > a)) a -= 0.5, b += 0.5;
    // 4-8 ticks at 1, 2 or 5 times a power of ten.
    const double raw = (b - a) / 5, mag = std::pow(10.0, std::floor(std::log10(raw)));
    const double step = raw / mag < 1.5 ? mag : raw / mag < 3.5 ? 2 * mag : raw / mag < 7.5 ? 5 * mag : 10 * mag;
    s.lo = std::floor(a / step) * step;
    s.hi = std::ceil(b / step) * step;
    for (double t = s.lo; t <= s.hi + step / 2; t += step) s.ticks.push_back(t);
  }
  return s;
}
}  // namespace detail

/// One chart panel at (x0, y0) of size w x h: title, grid with ticks, axis labels, polylines with
/// dots, and a legend in the top-left corner.
inline void panel(std::ostream& o, double x0, double y0, double w, double h, const std::string& title, const Axis& xa,
                  const Axis& ya, const std::vector<Series>& series) {
  using detail::num;
  auto usable = [](double v, bool log) { return std::isfinite(v) && (!log || v > 0); };
  std::vector<double> xs, ys;
  for (const auto& s : series)
    for (auto [x, y] : s.points)
      if (usable(x, xa.log) && usable(y, ya.log)) xs.push_back(x), ys.push_back(y);
  o << "<text x='" << num(x0 + w / 2) << "' y='" << num(y0 + 18) << "' text-anchor='middle' font-size='14' font-weight='bold'>" << title
    << "</text>\n";
  if (xs.empty()) return;
  const detail::Scale sx = detail::make_scale(xs, xa.log), sy = detail::make_scale(ys, ya.log);
  const double pl = 70, pr = 10, pt = 30, pb = 45;  // margins for the labels
  const double pw = w - pl - pr, ph = h - pt - pb;
  auto X = [&](double x) { return x0 + pl + sx.pos(x) * pw; };
  auto Y = [&](double y) { return y0 + pt + ph - sy.pos(y) * ph; };
  o << "<rect x='" << num(x0 + pl) << "' y='" << num(y0 + pt) << "' width='" << num(pw) << "' height='" << num(ph)
    << "' fill='none' stroke='#444'/>\n";
  for (double t : sx.ticks)
    o << "<line x1='" << num(X(t)) << "' y1='" << num(y0 + pt) << "' x2='" << num(X(t)) << "' y2='" << num(y0 + pt + ph)
      << "' stroke='#ddd'/>\n<text x='" << num(X(t)) << "' y='" << num(y0 + pt + ph + 15) << "' text-anchor='middle' font-size='11'>"
      << detail::tick_label(t, xa.log) << "</text>\n";
  for (double t : sy.ticks)
    o << "<line x1='" << num(x0 + pl) << "' y1='" << num(Y(t)) << "' x2='" << num(x0 + pl + pw) << "' y2='" << num(Y(t))
      << "' stroke='#ddd'/>\n<text x='" << num(x0 + pl - 5) << "' y='" << num(Y(t) + 4) << "' text-anchor='end' font-size='11'>"
      << detail::tick_label(t, ya.log) << "</text>\n";
  o << "<text x='" << num(x0 + pl + pw / 2) << "' y='" << num(y0 + h - 8) << "' text-anchor='middle' font-size='12'>" << xa.label
    << "</text>\n";
  o << "<text transform='translate(" << num(x0 + 16) << "," << num(y0 + pt + ph / 2) << ") rotate(-90)' text-anchor='middle' font-size='12'>"
    << ya.label << "</text>\n";
  double ly = y0 + pt + 14;
  for (const auto& s : series) {
    if (s.points.empty()) continue;
    const std::string dash = s.dashed ? " stroke-dasharray='6,4'" : "";
    o << "<polyline fill='none' stroke='" << s.color << "' stroke-width='2'" << dash << " points='";
    for (auto [x, y] : s.points)
      if (usable(x, xa.log) && usable(y, ya.log)) o << num(X(x)) << ',' << num(Y(y)) << ' ';
    o << "'/>\n";
    if (s.points.size() <= 64)
      for (auto [x, y] : s.points)
        if (usable(x, xa.log) && usable(y, ya.log)) o << "<circle cx='" << num(X(x)) << "' cy='" << num(Y(y)) << "' r='2.5' fill='" << s.color << "'/>\n";
    o << "<line x1='" << num(x0 + pl + 10) << "' y1='" << num(ly - 4) << "' x2='" << num(x0 + pl + 34) << "' y2='" << num(ly - 4)
      << "' stroke='" << s.color << "' stroke-width='2'" << dash << "/>\n<text x='" << num(x0 + pl + 40) << "' y='" << num(ly)
      << "' font-size='11'>" << s.name << "</text>\n";
    ly += 15;
  }
}

/// Writes an SVG document of the given size whose body `body` draws (panels).
inline void write(const std::string& path, double width, double height, const std::function<void(std::ostream&)>& body) {
  std::ofstream o(path);
  check(bool(o), path, "cannot open for writing");
  o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << detail::num(width) << "' height='" << detail::num(height)
    << "' font-family='sans-serif'>\n<rect width='100%' height='100%' fill='white'/>\n";
  body(o);
  o << "</svg>\n";
  check(bool(o), path, "write failed");
}

/// A single-panel chart.
inline void chart(const std::string& path, const std::string& title, const Axis& x, const Axis& y, const std::vector<Series>& series,
                  double width = 720, double height = 460) {
  write(path, width, height, [&](std::ostream& o) { panel(o, 0, 0, width, height, title, x, y, series); });
}

}  // namespace svg
ENGRAM_NAMESPACE_END
