// mote in the browser (`mote-lora/web`): the webgpu backend on navigator.gpu or a GPUDevice
// handed in, every op, the float64 references, and the model and generation code that works
// on tensors and parsed JSON. Reading and writing files (safetensors, model directories,
// bundles, checkpoints, the CLI) is Node-only. scripts/build-web.mjs bundles this file with
// the WGSL embedded.
export * from '../api_common.js';
export { openBackend, probeBackends, BACKEND_KINDS, type OpenOptions, type Availability } from './backend.js';
export { LORA_TILE } from '../backend/wgsl.js';
