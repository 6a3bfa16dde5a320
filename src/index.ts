export * from './errors.js';
export { type DType, type HostData, DTYPES, WEIGHT_DTYPES, f32ToBf16Bits, bf16BitsToF32, f32ToF16Bits, f16BitsToF32 } from './dtype.js';
export { Tensor } from './tensor.js';
export type { Backend, BackendInfo, BackendKind, BackendRequest } from './backend/backend.js';
export { openBackend, probeBackends, BACKEND_KINDS, type OpenOptions, type Availability } from './backend/select.js';
export type { WebGPUOptions } from './backend/webgpu.js';
export { matmul, matmulGradInput, matmulGradWeight, type MatmulDims, type AccumulateOptions } from './ops/matmul.js';
export * as reference from './reference/index.js';
