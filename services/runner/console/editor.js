// The playbook editor's pure parts: YAML highlighting with diagnostics marked in place, and a
// line diff between two versions. They return DOM nodes built with text only (no HTML parsing),
// like the rest of the console.

// Token classes of one line of YAML, character by character (code points, as the compiler's
// columns count them).
function classify(chars) {
  const classes = new Array(chars.length).fill("");
  let i = 0;
  // Indentation and sequence dashes.
  while (i < chars.length && (chars[i] === " " || (chars[i] === "-" && (chars[i + 1] === " " || i + 1 === chars.length)))) {
    if (chars[i] === "-") classes[i] = "y-punct";
    i += 1;
  }
  if (chars[i] === "#") {
    for (let j = i; j < chars.length; j += 1) classes[j] = "y-comment";
    return classes;
  }
  // A mapping key: plain or quoted text up to `: ` or a line-ending `:`.
  const rest = chars.slice(i).join("");
  const key = /^("[^"]*"|'[^']*'|[^\s#'"{[][^:#]*?)\s*:(?=\s|$)/.exec(rest);
  let valueStart = i;
  if (key) {
    const keyLength = Array.from(key[1]).length;
    for (let j = i; j < i + keyLength; j += 1) classes[j] = "y-key";
    valueStart = i + Array.from(key[0]).length;
    classes[valueStart - 1] = "y-punct";
  }
  let quote = null;
  for (let j = valueStart; j < chars.length; j += 1) {
    const c = chars[j];
    if (quote) {
      classes[j] = "y-string";
      if (c === quote && chars[j - 1] !== "\\") quote = null;
      continue;
    }
    if (c === "#" && (j === 0 || chars[j - 1] === " ")) {
      for (let k = j; k < chars.length; k += 1) classes[k] = "y-comment";
      break;
    }
    if (c === '"' || c === "'") {
      quote = c;
      classes[j] = "y-string";
      continue;
    }
    if (c === "{" && chars[j + 1] === "{") {
      let stop = chars.length;
      for (let k = j + 2; k + 1 < chars.length; k += 1) {
        if (chars[k] === "}" && chars[k + 1] === "}") {
          stop = k + 2;
          break;
        }
      }
      for (let k = j; k < stop; k += 1) classes[k] = "y-template";
      j = stop - 1;
      continue;
    }
    if ("[]{},".includes(c)) classes[j] = "y-punct";
  }
  // Scalars that YAML reads as something other than text.
  const value = chars.slice(valueStart).join("").trim();
  if (/^(true|false|null|~|-?\d+(\.\d+)?)$/.test(value)) {
    for (let j = valueStart; j < chars.length; j += 1) if (chars[j] !== " ") classes[j] = "y-scalar";
  }
  return classes;
}

/**
 * The source as highlighted lines, with each diagnostic's range marked (`diag-error`,
 * `diag-warning`) and its line flagged. `h` builds elements. Diagnostics use the compiler's
 * 1-based lines and columns, the end exclusive.
 */
export function highlight(h, source, diagnostics) {
  const lines = source.split("\n");
  const marks = lines.map(() => []);
  for (const diagnostic of diagnostics) {
    const first = Math.max(1, diagnostic.line);
    const last = Math.max(first, Math.min(diagnostic.end_line || first, lines.length));
    for (let line = first; line <= last && line <= lines.length; line += 1) {
      const width = Array.from(lines[line - 1]).length;
      const from = line === first ? diagnostic.column - 1 : 0;
      let to = line === last && diagnostic.end_line === line ? diagnostic.end_column - 1 : width;
      if (to <= from) to = from + 1;
      marks[line - 1].push({ from, to, severity: diagnostic.severity, message: diagnostic.message });
    }
  }
  return lines.map((text, index) => {
    const chars = Array.from(text);
    const classes = classify(chars);
    const lineMarks = marks[index];
    const markOf = (i) => {
      const hit = lineMarks.find((mark) => i >= mark.from && i < mark.to);
      return hit ? `diag-${hit.severity}` : "";
    };
    const line = h("span", { class: "line", "data-line": index + 1 });
    if (lineMarks.length) {
      line.classList.add(lineMarks.some((mark) => mark.severity === "error") ? "line-error" : "line-warning");
      line.title = lineMarks.map((mark) => mark.message).join("\n");
    }
    // Past the end of the line (a missing value): one marked space.
    const width = Math.max(chars.length, ...lineMarks.map((mark) => mark.to));
    let start = 0;
    while (start < width) {
      const cls = [classes[start] || "", markOf(start)].filter(Boolean).join(" ");
      let end = start + 1;
      while (end < width && [classes[end] || "", markOf(end)].filter(Boolean).join(" ") === cls) end += 1;
      const text = chars.slice(start, end).join("").padEnd(end - start, " ");
      line.append(cls ? h("span", { class: cls }, text) : document.createTextNode(text));
      start = end;
    }
    line.append(document.createTextNode("\n"));
    return line;
  });
}

/** The UTF-16 offset of a 1-based line and code-point column in `source`. */
export function offsetOf(source, line, column) {
  const lines = source.split("\n");
  let offset = 0;
  for (let i = 0; i < Math.min(line - 1, lines.length); i += 1) offset += lines[i].length + 1;
  const text = lines[Math.min(line, lines.length) - 1] || "";
  return offset + Array.from(text).slice(0, Math.max(0, column - 1)).join("").length;
}

/**
 * A line diff (longest common subsequence) from `before` to `after`: [{kind: " "|"-"|"+",
 * text}]. Playbooks are small; past 4,000 lines a side it says so instead.
 */
export function lineDiff(before, after) {
  const a = before.split("\n");
  const b = after.split("\n");
  if (a.length > 4000 || b.length > 4000) return null;
  const lcs = Array.from({ length: a.length + 1 }, () => new Uint16Array(b.length + 1));
  for (let i = a.length - 1; i >= 0; i -= 1) {
    for (let j = b.length - 1; j >= 0; j -= 1) {
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    if (a[i] === b[j]) {
      out.push({ kind: " ", text: a[i] });
      i += 1;
      j += 1;
    } else if (lcs[i + 1][j] >= lcs[i][j + 1]) {
      out.push({ kind: "-", text: a[i] });
      i += 1;
    } else {
      out.push({ kind: "+", text: b[j] });
      j += 1;
    }
  }
  while (i < a.length) out.push({ kind: "-", text: a[i++] });
  while (j < b.length) out.push({ kind: "+", text: b[j++] });
  return out;
}
