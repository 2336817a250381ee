// llm-audit audit page: the "all columns" switch, and the spectrum of the layer a reader picks
// (table.js sorts and filters the table). No library, no network. esdSvg mirrors esd_svg in
// report/plots.py (same geometry, classes).
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("page-data").textContent);
  var table = document.getElementById("layer-table");
  var fAll = document.getElementById("f-all");

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  fAll.addEventListener("change", function () { table.classList.toggle("all-columns", fAll.checked); });

  // ---- picking a layer: its static card if it has one (flagged), else a card drawn here -------
  var picked = document.getElementById("picked");
  function pick(i) {
    var card = document.getElementById("L" + i);
    if (card && !picked.contains(card)) {
      card.scrollIntoView({ block: "start" });
      card.classList.add("flash");
      setTimeout(function () { card.classList.remove("flash"); }, 1200);
      return;
    }
    var view = data.layers[i];
    picked.innerHTML = '<div class="picked-head"><span>picked layer</span>' +
      '<button type="button" id="picked-close">close</button></div>' + detailCard(view);
    picked.hidden = false;
    document.getElementById("picked-close").addEventListener("click", function () {
      picked.hidden = true;
      picked.innerHTML = "";
    });
    picked.scrollIntoView({ block: "start" });
  }
  document.addEventListener("click", function (ev) {
    var a = ev.target.closest ? ev.target.closest("[data-pick]") : null;
    var tr = a ? null : ev.target.closest && ev.target.closest("#layer-table tbody tr");
    if (!a && !tr) { return; }
    ev.preventDefault();
    pick(parseInt(a ? a.getAttribute("data-pick") : tr.getAttribute("data-i"), 10));
  });

  // ---- one layer's card and ESD (mirrors detail_card in html.py and esd_svg in plots.py) -------
  function detailCard(v) {
    var flags = v.flags.map(function (f) {
      return '<span class="flag f-' + esc(f) + '">' + esc(f) + "</span>";
    }).join("");
    var meta = "role " + esc(v.role) + " · block " + esc(v.block) + " · shape " + esc(v.shape) +
      " · Q " + esc(v.Q) + " · status " + esc(v.status) + (v.reason ? " (" + esc(v.reason) + ")" : "");
    var dl = "<dl>" + v.m.map(function (kv) {
      return "<dt>" + esc(kv[0]) + "</dt><dd>" + esc(kv[1]) + "</dd>";
    }).join("") + "</dl>";
    var plot = v.esd
      ? "<figure>" + esdSvg(v.esd, "ESD of " + v.name) + "<figcaption>" + legend(v.esd) + "</figcaption></figure>"
      : document.getElementById("no-spectra") ? "" : '<p class="note">No spectrum stored for this layer.</p>';
    var traps = "";
    if (v.te.length) {
      traps = "<div class='traps'><p title='the matrix elements behind the traps'><b>trap entries</b>, largest |z| first</p>" +
        "<table class='mini'><thead><tr><th>row</th><th>col</th><th>value</th><th>z</th></tr></thead><tbody>" +
        v.te.map(function (r) {
          return "<tr>" + r.map(function (c) { return "<td>" + esc(c) + "</td>"; }).join("") + "</tr>";
        }).join("") + "</tbody></table>" +
        (v.te_total > v.te.length ? "<p class='muted'>first " + v.te.length + " of " + v.te_total + " entries</p>" : "") +
        "</div>";
    }
    return '<article class="layer-card"><h3><code>' + esc(v.name) + "</code> " + flags + "</h3>" +
      '<p class="muted">' + meta + '</p><div class="card-body">' + dl + plot + traps + "</div></article>";
  }

  function legend(esd) {
    var items = ['<span class="key k-bar"></span>ESD'];
    if (esd.alpha !== null) {
      items.push('<span class="key k-fit"></span>power-law fit (slope −alpha = −' + esd.alpha.toFixed(2) + ")",
        '<span class="key k-xmin"></span>xmin');
    }
    if (esd.nr) {
      items.push('<span class="key k-rand"></span>shuffled ESD', '<span class="key k-bulk"></span>MP edge',
        '<span class="key k-mre"></span>max_rand_eval', '<span class="key k-trap">▼</span>shuffled spikes');
    }
    var tail = esd.below ? " " + esd.below + " eigenvalue(s) ≈ 0 not drawn." : "";
    return items.map(function (i) { return '<span class="li">' + i + "</span>"; }).join(" ") + tail;
  }

  var W = 560, H = 300, ML = 58, MR = 14, MT = 16, MB = 40;
  function log10(v) { return Math.log(v) / Math.LN10; }
  function f1(v) { return v.toFixed(1); }
  function tickLabel(u) {
    var k = Math.floor(u + 1e-9), m = Math.round(Math.pow(10, u - k));
    if (k >= -2 && k <= 3) { return (m * Math.pow(10, k)).toFixed(Math.max(0, -k)); }
    return m + "e" + k;
  }
  function logTicks(lo, hi) {
    var out = [], k, m;
    for (k = Math.ceil(lo); k <= Math.floor(hi); k++) { out.push(k); }
    if (out.length >= 2) { return out; }
    out = [];
    for (k = Math.floor(lo); k <= Math.ceil(hi); k++) {
      [1, 2, 5].forEach(function (m) { var u = k + log10(m); if (u >= lo && u <= hi) { out.push(u); } });
    }
    return out;
  }
  function densities(counts, n, lo, hi) {
    var step = counts.length ? (hi - lo) / counts.length : 1;
    return counts.map(function (c, i) {
      var width = Math.pow(10, lo + (i + 1) * step) - Math.pow(10, lo + i * step);
      return c > 0 && n > 0 ? log10(c / n / width) : null;
    });
  }
  function esdSvg(esd, label) {
    var lo = esd.lo, hi = esd.hi;
    var de = densities(esd.e, esd.ne, lo, hi), dr = densities(esd.r, esd.nr, lo, hi);
    var vals = de.concat(dr).filter(function (d) { return d !== null; });
    if (!vals.length) { return '<p class="note">No eigenvalue above zero to plot.</p>'; }
    var ylo = Math.min.apply(null, vals) - 0.25, yhi = Math.max.apply(null, vals) + 0.25;
    if (Math.floor(yhi) < ylo) { ylo = Math.floor(ylo); }
    var pw = W - ML - MR, ph = H - MT - MB, base = MT + ph, step = (hi - lo) / esd.e.length;
    function x(u) { return ML + (u - lo) / (hi - lo) * pw; }
    function y(v) { return MT + (yhi - v) / (yhi - ylo) * ph; }
    var p = ['<svg class="esd" viewBox="0 0 ' + W + " " + H + '" role="img" aria-label="' + esc(label) + '">',
      '<rect class="frame" x="' + ML + '" y="' + MT + '" width="' + pw + '" height="' + ph + '"/>'];
    logTicks(lo, hi).forEach(function (u) {
      p.push('<line class="grid" x1="' + f1(x(u)) + '" x2="' + f1(x(u)) + '" y1="' + MT + '" y2="' + base + '"/>');
      p.push('<text class="tick" x="' + f1(x(u)) + '" y="' + (base + 13) + '" text-anchor="middle">' + tickLabel(u) + "</text>");
    });
    logTicks(ylo, yhi).forEach(function (v) {
      p.push('<line class="grid" x1="' + ML + '" x2="' + (ML + pw) + '" y1="' + f1(y(v)) + '" y2="' + f1(y(v)) + '"/>');
      p.push('<text class="tick" x="' + (ML - 4) + '" y="' + f1(y(v) + 3) + '" text-anchor="end">' + tickLabel(v) + "</text>");
    });
    var bars = "";
    de.forEach(function (d, i) {
      if (d !== null) { bars += "M" + f1(x(lo + i * step)) + "," + base + "V" + f1(y(d)) + "H" + f1(x(lo + (i + 1) * step)) + "V" + base + "Z"; }
    });
    p.push('<path class="esd-bar" d="' + bars + '"/>');
    var out = "", inside = false;
    dr.forEach(function (v, i) {
      if (v === null) { if (inside) { out += "V" + base; } inside = false; return; }
      out += inside ? "V" + f1(y(v)) + "H" + f1(x(lo + (i + 1) * step))
        : "M" + f1(x(lo + i * step)) + "," + base + "V" + f1(y(v)) + "H" + f1(x(lo + (i + 1) * step));
      inside = true;
    });
    if (inside) { out += "V" + base; }
    if (out) { p.push('<path class="esd-rand" d="' + out + '"/>'); }
    p.push(fitLine(esd, ylo, yhi, lo, hi, x, y));
    [["xmin", "mark-xmin", "xmin"], ["bulk", "mark-bulk", "MP bulk edge (rand_bulk_max)"],
      ["mre", "mark-rand", "max_rand_eval"]].forEach(function (m) {
      var v = esd[m[0]];
      if (v !== null && v > 0 && log10(v) >= lo && log10(v) <= hi) {
        var xv = f1(x(log10(v)));
        p.push('<line class="' + m[1] + '" x1="' + xv + '" x2="' + xv + '" y1="' + MT + '" y2="' + base +
          '"><title>' + m[2] + " = " + v + "</title></line>");
      }
    });
    esd.spikes.forEach(function (s) {
      if (s !== null && s > 0) {
        var xs = x(Math.min(hi, Math.max(lo, log10(s))));
        p.push('<path class="mark-trap" d="M' + f1(xs - 5) + "," + MT + 'h10l-5,8Z"><title>shuffled eigenvalue ' +
          s + " above the MP edge</title></path>");
      }
    });
    p.push('<text class="axis" x="' + (ML + pw / 2) + '" y="' + (H - 4) + '" text-anchor="middle">eigenvalue λ of WᵀW (log scale)</text>' +
      '<text class="axis" transform="translate(13,' + (MT + ph / 2) + ') rotate(-90)" text-anchor="middle">density p(λ) (log)</text></svg>');
    return p.join("");
  }
  function fitLine(esd, ylo, yhi, lo, hi, x, y) {
    var a = esd.alpha, xmin = esd.xmin, xmax = esd.xmax, npl = esd.npl;
    if (a === null || xmin === null || xmax === null || npl === null || !esd.ne) { return ""; }
    if (a <= 1 || xmin <= 0 || xmax <= xmin || npl <= 0) { return ""; }
    var c = log10(npl / esd.ne * (a - 1) / xmin), lx = log10(xmin);
    var u0 = Math.max(lo, lx), u1 = Math.min(hi, log10(xmax));
    function at(u) { return c - a * (u - lx); }
    if (at(u0) > yhi) { u0 = lx + (c - yhi) / a; }
    if (at(u1) < ylo) { u1 = lx + (c - ylo) / a; }
    if (u1 <= u0) { return ""; }
    return '<line class="esd-fit" x1="' + f1(x(u0)) + '" y1="' + f1(y(at(u0))) + '" x2="' + f1(x(u1)) +
      '" y2="' + f1(y(at(u1))) + '"><title>power-law fit, alpha = ' + a.toFixed(2) + "</title></line>";
  }

  // The tests compare this drawing with the one made in Python for the same layer.
  window.llmAudit = { esdSvg: esdSvg };
})();
