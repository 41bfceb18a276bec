/**
 * The sidebar's one way to make DOM. Text always goes in through text nodes,
 * never as markup, so a job named `<img onerror=...>` shows as exactly that.
 */

export type Child = Node | string | null | undefined | false;

/** Make an element; string children become text nodes (escaped by the DOM). */
export function el(
  tag: string,
  attrs: Record<string, string> = {},
  ...children: Child[]
): HTMLElement {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') {
      node.className = value;
    } else {
      node.setAttribute(key, value);
    }
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) {
      continue;
    }
    node.append(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return node;
}

/** A CSS class suffix made from server data: letters, digits and dashes only. */
export function token(text: string): string {
  return String(text).toLowerCase().replace(/[^a-z0-9-]/g, '-');
}

/** The parts that are there, joined by " · ". */
export function joined(parts: (string | null | false | undefined)[]): string {
  return parts.filter((part): part is string => !!part).join(' · ');
}
