// Opens a demix report in headless Chromium at 1000 px and checks what a
// reader sees: no page-level horizontal overflow (wide tables scroll inside
// their own box), every <svg> drawn with a non-empty box and every <img>
// loaded; saves a full-page screenshot and one per section.
//
//   node benches/report-browser.mjs REPORT.html OUT_DIR
//
// Needs playwright-core (npm) and Chromium (CHROMIUM, default /usr/bin/chromium).
import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const [html, out] = process.argv.slice(2);
if (!html || !out) {
  console.error("usage: node report-browser.mjs REPORT.html OUT_DIR");
  process.exit(2);
}
mkdirSync(out, { recursive: true });
const width = 1000;
const profile = mkdtempSync(join(tmpdir(), "demix-report-chromium-"));
// A fresh profile each run (playwright passes it as --user-data-dir).
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width, height: 900 },
});
const page = await browser.newPage();
const requests = [];
page.on("request", (r) => { if (!r.url().startsWith("file:")) requests.push(r.url()); });
await page.goto("file://" + resolve(html), { waitUntil: "load" });
const facts = await page.evaluate(() => {
  const doc = document.documentElement;
  const svgs = [...document.querySelectorAll("svg")].map((s, i) => {
    const r = s.getBoundingClientRect();
    return { i, title: s.getAttribute("aria-label"), w: r.width, h: r.height,
      shapes: s.querySelectorAll("circle,rect,polyline,polygon,line,path").length,
      overflowsPage: r.right > window.innerWidth + 0.5 };
  });
  const imgs = [...document.querySelectorAll("img")].map((m) => ({
    src: m.src.slice(0, 60), ok: m.complete && m.naturalWidth > 0 }));
  // Boxes that scroll sideways, and anything wider than the window outside one.
  const scrolling = [...document.querySelectorAll(".scroll")]
    .filter((d) => d.scrollWidth > d.clientWidth + 1)
    .map((d) => d.closest("section")?.id ?? "header");
  const wide = [...document.querySelectorAll("body *")]
    .filter((e) => e.getBoundingClientRect().right > window.innerWidth + 0.5 && !e.closest(".scroll"))
    .map((e) => e.tagName.toLowerCase() + (e.id ? "#" + e.id : ""));
  const first = [...document.querySelectorAll("header > *, section > h2")]
    .slice(0, 6).map((e) => e.className ? `${e.tagName.toLowerCase()}.${e.className}` : e.textContent.slice(0, 40));
  return { scrollWidth: doc.scrollWidth, innerWidth: window.innerWidth, svgs, imgs, scrolling, wide,
    sections: [...document.querySelectorAll("section")].map((s) => s.id), first };
});
await page.screenshot({ path: join(out, "report-full.png"), fullPage: true });
for (const id of facts.sections) {
  await page.locator(`section#${id}`).screenshot({ path: join(out, `section-${id}.png`) });
}
await page.locator("header").screenshot({ path: join(out, "header.png") });
await browser.close();

const problems = [];
if (facts.scrollWidth > facts.innerWidth) {
  problems.push(`page overflows: scrollWidth ${facts.scrollWidth} > window ${facts.innerWidth} (${facts.wide.slice(0, 8).join(", ")})`);
}
for (const s of facts.svgs) {
  if (!(s.w > 0 && s.h > 0 && s.shapes > 0)) problems.push(`svg ${s.i} (${s.title}) is empty: ${s.w}x${s.h}, ${s.shapes} shapes`);
  if (s.overflowsPage) problems.push(`svg ${s.i} (${s.title}) is wider than the window`);
}
for (const m of facts.imgs) if (!m.ok) problems.push(`img ${m.src} did not load`);
if (requests.length) problems.push(`the report fetched: ${requests.join(", ")}`);
writeFileSync(join(out, "facts.json"), JSON.stringify({ ...facts, problems }, null, 2));
console.log(`window ${facts.innerWidth} px, page ${facts.scrollWidth} px wide; ${facts.svgs.length} svg, ${facts.imgs.length} img`);
console.log(`sections: ${facts.sections.join(", ")}`);
console.log(`opens with: ${facts.first.join(" | ")}`);
console.log(`tables that scroll in their own box: ${facts.scrolling.join(", ") || "none"}`);
console.log(`screenshots in ${out}`);
if (problems.length) {
  for (const p of problems) console.log("PROBLEM: " + p);
  process.exit(1);
}
console.log("ok");
