// The page's tabs (WAI-ARIA's tabs pattern, activated as focus moves): a click or the arrow keys, Home and End
// choose a tab; only its panel is shown, and only the chosen tab is in the Tab key's order. The choice is kept.
"use strict";

import { $, KEYS } from "./common.js";

const tabs = () => [...document.querySelectorAll('[role="tab"]')];

// The panel shown now.
export function shownPanel() {
  return document.querySelector('[role="tabpanel"]:not([hidden])') || document.body;
}

function showTab(tab, focus, remember = true) {
  for (const other of tabs()) {
    const selected = other === tab;
    other.setAttribute("aria-selected", String(selected));
    other.tabIndex = selected ? 0 : -1;
    $(other.getAttribute("aria-controls")).hidden = !selected;
  }
  if (focus) tab.focus();
  if (!remember) return;
  try {
    localStorage.setItem(KEYS.tab, tab.id);
  } catch {
    // Storage refused: the page opens on its first tab next time.
  }
}

export function bindTabs() {
  const list = tabs();
  const moves = { ArrowRight: 1, ArrowLeft: -1 };
  for (const tab of list) {
    tab.addEventListener("click", () => showTab(tab, false));
    tab.addEventListener("keydown", (event) => {
      const at = list.indexOf(tab);
      let next;
      if (event.key in moves) next = (at + moves[event.key] + list.length) % list.length;
      else if (event.key === "Home") next = 0;
      else if (event.key === "End") next = list.length - 1;
      else return;
      event.preventDefault();
      showTab(list[next], true);
    });
  }
  const saved = $(localStorage.getItem(KEYS.tab) || "");
  showTab(list.includes(saved) ? saved : list[0], false, false);
}
