/** Base class of every error mote throws on purpose. */
export class MoteError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** A tensor or size has the wrong shape. */
export class ShapeError extends MoteError {}
/** A tensor has the wrong dtype. */
export class DTypeError extends MoteError {}
/** A scalar argument is out of range or of the wrong kind. */
export class ArgumentError extends MoteError {}
/** A tensor was used after dispose(). */
export class DisposedTensorError extends MoteError {}
/** A tensor of one backend was handed to another. */
export class BackendMismatchError extends MoteError {}
/** A backend cannot start here; the message says why. */
export class BackendUnavailableError extends MoteError {
  constructor(
    readonly backend: string,
    readonly reason: string,
  ) {
    super(`backend '${backend}' is unavailable: ${reason}`);
  }
}
/**
 * The GPU device was lost (destroyed, a driver reset, a watchdog that killed a long
 * dispatch): thrown by the first op, read, write or sync after the loss, naming the op and the
 * reason. The backend stays unusable (`lost` says why): open a new one.
 */
export class DeviceLostError extends MoteError {
  constructor(
    readonly backend: string,
    /** GPUDeviceLostInfo's reason ('destroyed' or 'unknown') and message. */
    readonly reason: string,
    /** The op that found the device lost. */
    readonly op: string,
  ) {
    super(`${backend}: the device was lost (${reason}) before ${op}; this backend is unusable, open a new one`);
  }
}
/** An error raised inside native code (C++ exception or CUDA error). */
export class NativeError extends MoteError {}
/** A file (safetensors, config.json, adapter_config.json, ...) is malformed or incomplete; the message names the file and the entry. */
export class FormatError extends MoteError {}

/** Entries of an array, and characters of a string, that a message shows before '…'. */
const DESCRIBE_ITEMS = 16;
const DESCRIBE_CHARS = 200;

/** One array entry: primitives as themselves, anything nested only by its kind (no recursion: hostile JSON nests 10^5 deep). */
function describeItem(v: unknown): string {
  if (Array.isArray(v)) return v.length === 0 ? '[]' : '[…]';
  if (typeof v === 'string') return describeString(v);
  if (v !== null && typeof v === 'object') return ArrayBuffer.isView(v) ? v.constructor.name : 'Object';
  return String(v);
}

function describeString(v: string): string {
  return v.length > DESCRIBE_CHARS ? `${JSON.stringify(v.slice(0, DESCRIBE_CHARS))}… (${v.length} characters)` : JSON.stringify(v);
}

/** Describes a value for an error message without dumping large arrays or strings, or recursing into nested ones. */
export function describe(v: unknown): string {
  if (Array.isArray(v)) {
    const shown = v.slice(0, DESCRIBE_ITEMS).map(describeItem).join(', ');
    return v.length > DESCRIBE_ITEMS ? `[${shown}, … (${v.length} entries)]` : `[${shown}]`;
  }
  if (typeof v === 'string') return describeString(v);
  if (v === null || v === undefined) return String(v);
  if (ArrayBuffer.isView(v)) return `${v.constructor.name}(${(v as unknown as { length: number }).length})`;
  if (typeof v === 'object') return (v as object).constructor?.name ?? 'object';
  return String(v);
}
