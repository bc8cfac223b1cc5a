// Draws the history page's two charts (Chart.js, vendored) from the JSON the page embeds: the best series by
// their last score and the signed-in team's, drawn thicker (the table under each chart lists every series).
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("history-data").textContent);
  const view = JSON.parse(document.getElementById("history-view").textContent);
  const labels = data.rounds.map((n) => "round " + n);
  const percent = (value) => (value === null || value === undefined ? "–" : (100 * value).toFixed(1) + "%");

  function colour(i, alpha) {
    return "hsla(" + ((i * 137.508) % 360).toFixed(0) + ", 65%, 45%, " + alpha + ")";
  }

  function draw(canvasId, all) {
    const canvas = document.getElementById(canvasId);
    if (!canvas) return;
    const scored = all.filter((s) => s.values.some((v) => v !== null)); // plugins that never scored draw nothing
    const series = scored.filter((s, i) => i < view.top || s.team === view.own_team); // best first (the server sorts)
    new Chart(canvas, {
      type: "line",
      data: {
        labels: labels,
        datasets: series.map((s, i) => ({
          label: s.label,
          data: s.values,
          borderColor: colour(i, 1),
          backgroundColor: colour(i, 0.6),
          pointRadius: s.team === view.own_team ? 5 : 3,
          borderWidth: s.team === view.own_team ? 4 : 2,
          spanGaps: false,
        })),
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        interaction: { mode: "nearest", intersect: false },
        scales: {
          x: { offset: true },
          y: { min: 0, max: 1, ticks: { callback: (v) => Math.round(100 * v) + "%" } },
        },
        plugins: {
          legend: { position: "bottom", labels: { boxWidth: 12 } },
          tooltip: { callbacks: { label: (c) => c.dataset.label + ": " + percent(c.parsed.y) } },
        },
      },
    });
  }

  draw("defense-chart", data.defenses);
  draw("attack-chart", data.attacks);
})();
