// llm-audit tables: every table.sortable sorts by a click on a header (or Enter on it), numbers as
// numbers and text as text, empty cells always last; the controls that name a table in
// data-filter-for filter its rows (see select_filter and text_filter in report/page.py).
(function () {
  "use strict";
  var each = function (list, fn) { Array.prototype.forEach.call(list, fn); };

  function sortable(table) {
    var tbody = table.tBodies[0], heads = table.tHead.rows[0].cells, state = { col: -1, dir: 1 };
    function sortBy(col) {
      var num = heads[col].getAttribute("data-type") === "num";
      var dir = state.col === col ? -state.dir : 1;
      state = { col: col, dir: dir };
      var keyed = Array.prototype.map.call(tbody.rows, function (tr) {
        var v = tr.cells[col].getAttribute("data-v");
        return { tr: tr, v: v === "" ? null : num ? parseFloat(v) : v.toLowerCase() };
      });
      keyed.sort(function (a, b) {
        if (a.v === null || b.v === null) { return a.v === b.v ? 0 : a.v === null ? 1 : -1; }
        return a.v < b.v ? -dir : a.v > b.v ? dir : 0;
      });
      keyed.forEach(function (k) { tbody.appendChild(k.tr); });
      each(heads, function (th, i) {
        th.classList.remove("sort-asc", "sort-desc");
        th.removeAttribute("aria-sort");
        if (i === col) {
          th.classList.add(dir === 1 ? "sort-asc" : "sort-desc");
          th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
        }
      });
    }
    each(heads, function (th, i) {
      th.tabIndex = 0;
      th.addEventListener("click", function () { sortBy(i); });
      th.addEventListener("keydown", function (ev) {
        if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); sortBy(i); }
      });
    });
  }

  // A row is shown when every control keeps it: "name" matches the first cell's text, any other
  // data-match the row's data-<attr> (equal, or one of its words with data-tokens).
  function keeps(control, tr) {
    var want = control.value.trim(), attr = control.getAttribute("data-match");
    if (want === "") { return true; }
    if (attr === "name") { return tr.cells[0].textContent.toLowerCase().indexOf(want.toLowerCase()) >= 0; }
    var have = tr.getAttribute("data-" + attr) || "";
    if (control.hasAttribute("data-tokens")) { return (" " + have + " ").indexOf(" " + want + " ") >= 0; }
    return have === want;
  }

  function filterable(table) {
    var controls = document.querySelectorAll('[data-filter-for="' + table.id + '"]');
    var count = document.querySelector('[data-count-for="' + table.id + '"]');
    var rows = Array.prototype.slice.call(table.tBodies[0].rows);
    if (!controls.length) { return; }
    function apply() {
      var shown = 0;
      rows.forEach(function (tr) {
        var ok = Array.prototype.every.call(controls, function (c) { return keeps(c, tr); });
        tr.hidden = !ok;
        if (ok) { shown += 1; }
      });
      if (count) { count.textContent = shown + " of " + rows.length + " " + count.getAttribute("data-noun"); }
    }
    each(controls, function (c) { c.addEventListener(c.tagName === "SELECT" ? "change" : "input", apply); });
    apply();
  }

  each(document.querySelectorAll("table.sortable"), function (table) {
    sortable(table);
    filterable(table);
  });
})();
