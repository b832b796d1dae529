/**
 * JSON text for PostgreSQL's json and jsonb parameters (the imports table's options, summary and
 * counters).
 */

/**
 * `value` as JSON text PostgreSQL takes. JSON.stringify writes a lone UTF-16 surrogate (an
 * export's field name may hold one, `"x\ud800"`, and it reaches the summary's unknown fields) as
 * that escape, which PostgreSQL's json parser refuses ("Unicode low surrogate must follow a high
 * surrogate"): the import's last statement failed and everything was rolled back. Each lone
 * surrogate, in a key or a value, becomes U+FFFD, as a text parameter's UTF-8 encoding makes it.
 */
export function jsonText(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) => {
    if (typeof v === 'string') return v.toWellFormed();
    if (v !== null && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).some((k) => !k.isWellFormed())) {
      return Object.fromEntries(Object.entries(v).map(([k, x]) => [k.toWellFormed(), x]));
    }
    return v;
  });
}
