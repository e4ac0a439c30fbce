/** A random id; crypto.randomUUID needs a secure context, getRandomValues does not. */
export function newId(): string {
  const b = crypto.getRandomValues(new Uint8Array(16))
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('')
}
