// Lets pending events run (a SIGINT handler, I/O, a page's input) between steps of work that
// may compute without yielding: setImmediate in Node, a zero timeout where there is none (a
// browser page).
export function yieldToEventLoop(): Promise<void> {
  return new Promise<void>((resolve) => (typeof setImmediate === 'function' ? setImmediate(resolve) : setTimeout(resolve, 0)));
}
