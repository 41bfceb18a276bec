/**
 * The sidebar's one formatter. The same figures are checked on the Python
 * side (tests/test_formatting.py): both write sizes and times alike.
 */
import { formatAge, formatBytes, formatDuration } from '../src/format';

const BYTES: [number, string][] = [
  [0, '0 B'],
  [512, '512 B'],
  [1023, '1023 B'],
  [1023.5, '1.0 KiB'],
  [1536, '1.5 KiB'],
  [9.96 * 1024, '10 KiB'],
  [20 * 1024 ** 2, '20 MiB'],
  [1024 ** 2 - 100, '1.0 MiB'],
  [3.25 * 1024 ** 3, '3.3 GiB'],
  [2 * 1024 ** 5, '2.0 PiB'],
  [3000 * 1024 ** 5, '3000 PiB']
];

const DURATIONS: [number, string][] = [
  [0, '0.0 s'],
  [0.04, '0.0 s'],
  [0.4, '0.4 s'],
  [9.94, '9.9 s'],
  [9.95, '10 s'],
  [12.7, '13 s'],
  [60, '1 m'],
  [125, '2 m 5 s'],
  [200, '3 m 20 s'],
  [600, '10 m'],
  [3599.6, '1 h'],
  [3720, '1 h 2 m'],
  [7500, '2 h 5 m'],
  [3 * 86400 + 4 * 3600 + 59, '3 d 4 h']
];

const AGES: [number, string][] = [
  [0, '0 s'],
  [30, '30 s'],
  [90, '1 m'],
  [3 * 3600 + 59 * 60, '3 h'],
  [2 * 86400, '2 d']
];

describe('formatBytes', () => {
  it.each(BYTES)('writes %p bytes as %p (powers of 1024)', (value, text) => {
    expect(formatBytes(value)).toBe(text);
  });

  it('says "-" when the size is unknown', () => {
    for (const value of [null, undefined, -1, NaN, Infinity]) {
      expect(formatBytes(value)).toBe('-');
    }
  });
});

describe('formatDuration', () => {
  it.each(DURATIONS)('writes %p seconds as %p', (value, text) => {
    expect(formatDuration(value)).toBe(text);
  });

  it('says "-" when the duration is unknown', () => {
    for (const value of [null, undefined, -0.1, NaN]) {
      expect(formatDuration(value)).toBe('-');
    }
  });
});

describe('formatAge', () => {
  const now = Date.parse('2026-01-01T00:00:00Z');

  it.each(AGES)('writes %p seconds ago as %p', (seconds, text) => {
    expect(formatAge(new Date(now - seconds * 1000).toISOString(), now)).toBe(text);
  });

  it('never goes negative when the server clock is ahead, and says "-" when unknown', () => {
    expect(formatAge('2026-01-01T00:00:05Z', now)).toBe('0 s');
    expect(formatAge(null, now)).toBe('-');
    expect(formatAge('not a time', now)).toBe('-');
  });
});
