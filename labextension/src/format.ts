/**
 * Sizes, durations and ages as the sidebar writes them. One rule for the
 * whole product, the same as the Python side's `jupyter_aigrid/formatting.py`
 * (keep the two in step; both test suites check the same figures):
 *
 * - Bytes in binary units (powers of 1024): "512 B", "1.5 KiB", "20 MiB",
 *   "3.2 GiB"; one decimal below 10 of a unit, whole numbers above.
 * - Durations: "0.4 s" and "9.9 s" (one decimal below 10 s); then whole
 *   seconds and the two largest units, the second left out when it is zero:
 *   "12 s", "3 m 20 s", "10 m", "2 h 5 m", "3 d 4 h".
 * - Ages (how long ago): the largest unit only, rounded down: "42 s", "5 m".
 *
 * Anything unknown (null, negative, not a number) is "-".
 */

export const UNKNOWN = '-';
const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
/** [suffix, seconds], largest first. */
const TIME_UNITS: [string, number][] = [
  ['d', 86400],
  ['h', 3600],
  ['m', 60],
  ['s', 1]
];

function amount(value: number | null | undefined): number | null {
  return typeof value === 'number' && Number.isFinite(value) && value >= 0 ? value : null;
}

/** Tenths, half up: the same arithmetic as the Python side. */
function tenths(value: number): number {
  return Math.floor(value * 10 + 0.5);
}

/** 1536 -> "1.5 KiB", 20 * 1024 ** 2 -> "20 MiB"; "-" when unknown. */
export function formatBytes(value: number | null | undefined): string {
  let size = amount(value);
  if (size === null) {
    return UNKNOWN;
  }
  let unit = 0;
  // 1023.6 KiB reads better as "1.0 MiB" than as "1024 KiB".
  while (size >= 1023.5 && unit < BYTE_UNITS.length - 1) {
    size /= 1024;
    unit++;
  }
  if (unit === 0) {
    return `${Math.floor(size + 0.5)} B`;
  }
  const t = tenths(size);
  return t < 100
    ? `${(t / 10).toFixed(1)} ${BYTE_UNITS[unit]}`
    : `${Math.floor(size + 0.5)} ${BYTE_UNITS[unit]}`;
}

/** 0.4 -> "0.4 s", 200 -> "3 m 20 s", 7500 -> "2 h 5 m"; "-" when unknown. */
export function formatDuration(value: number | null | undefined): string {
  const seconds = amount(value);
  if (seconds === null) {
    return UNKNOWN;
  }
  const t = tenths(seconds);
  if (t < 100) {
    return `${(t / 10).toFixed(1)} s`;
  }
  const whole = Math.floor(seconds + 0.5);
  const at = TIME_UNITS.findIndex(([, size]) => whole >= size);
  const [suffix, size] = TIME_UNITS[at];
  let text = `${Math.floor(whole / size)} ${suffix}`;
  if (suffix !== 's') {
    const [nextSuffix, nextSize] = TIME_UNITS[at + 1];
    const rest = Math.floor((whole % size) / nextSize);
    if (rest) {
      text += ` ${rest} ${nextSuffix}`;
    }
  }
  return text;
}

/** How long ago `iso` was, in its largest unit, rounded down ("5 m"); "-" when unknown. */
export function formatAge(iso: string | null | undefined, now: number = Date.now()): string {
  const at = iso ? Date.parse(iso) : NaN;
  if (!Number.isFinite(at)) {
    return UNKNOWN;
  }
  // A clock a little ahead of the server's must not make an age negative.
  const seconds = Math.max(0, (now - at) / 1000);
  const [suffix, size] = TIME_UNITS.find(([, s]) => seconds >= s) ?? TIME_UNITS[TIME_UNITS.length - 1];
  return `${Math.floor(seconds / size)} ${suffix}`;
}
