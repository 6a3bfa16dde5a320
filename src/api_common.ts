// What both entries export: the Node one (src/index.ts) and the browser one (src/web/index.ts,
// which adds its own openBackend). Everything here runs without Node built-ins.
export * from './errors.js';
export { type DType, type HostData, DTYPES, WEIGHT_DTYPES, f32ToBf16Bits, bf16BitsToF32, f32ToF16Bits, f16BitsToF32 } from './dtype.js';
export { Tensor } from './tensor.js';
export { type Backend, type BackendInfo, type BackendKind, type BackendRequest } from './backend/backend.js';
export * as reference from './reference/index.js';
export * from './ops/index.js';
export * from './model/config.js';
export {
  LlamaModel,
  type LogitsRouting,
  type CheckedSegments,
  type LlamaBatch,
  type LlamaLora,
  type LlamaSegments,
  type LlamaWeights,
  type LlamaLayerWeights,
} from './model/llama.js';
export { loadModel, modelFromTensors, type LoadModelOptions, type WeightDType } from './model/load.js';
export { saveModel } from './model/save.js';
export { loadTokenizer } from './io/tokenizer.js';
export { MoteBundle, createMote, addStepTokens } from './mote/bundle.js';
export { saveMote, loadMote, exportPeft } from './mote/bundle_io.js';
export { AdapterSet, createLora, loadPeftAdapters } from './adapters/adapter_set.js';
export {
  openSource,
  UrlSource,
  BlobSource,
  BytesSource,
  OpfsSource,
  type FileSource,
  type SourceInput,
  type UrlSourceOptions,
} from './io/source.js';
export { MemorySink, OpfsSink, openSink, tarFiles, type FileSink } from './io/sink.js';
export { Trainer, type TrainExample, type TrainerOptions, type TrainProgress } from './train/trainer.js';
export { saveCheckpoint, loadCheckpoint } from './train/checkpoint.js';
export { promptIds, stepTokenIds, chainExample, chainExamples, packExamples } from './mote/chains.js';
export { toyQuestions, toyChain, toySplit, isRefusal, type ToyQuestion } from './mote/toy.js';
export { evaluateToy, trainVariant, toyEvalTable, type ToyEvalResult } from './mote/eval.js';
export { KvCache, type KvCacheDims, type KvCacheOptions } from './model/kv_cache.js';
export {
  generate,
  type GenerateRequest,
  type GenerateOptions,
  type GenerateResult,
  type TokenRouter,
  type RouteState,
  type RouteSlots,
  type ForceStep,
  type TokenEvent,
  type StopReason,
} from './generate/generate.js';
export {
  argmax,
  checkSampling,
  sampleToken,
  samplingDistribution,
  SeededRng,
  type SamplingOptions,
  type ResolvedSampling,
} from './generate/sampling.js';
export {
  MoteTokenizer,
  DecodeStream,
  type ChatMessage,
  type EncodeOptions,
  type DecodeOptions,
  type ChatTemplateOptions,
} from './io/tokenizer.js';
export * from './mote/steps.js';
export {
  llamaLossAndGrad,
  baseWeights,
  disposeGrads,
  type LlamaTrainBatch,
  type LlamaGrads,
  type LlamaGradOptions,
  type LlamaGradResult,
} from './model/llama_backward.js';
export { mulberry32, mixSeed } from './rng.js';
export { learningRate, checkSchedule, type ScheduleOptions } from './train/schedule.js';
export {
  DEFAULT_TEMPLATES,
  STAGE_VARS,
  alignCotTemplates,
  stagePrompt,
  renderTemplate,
  templateVars,
  parseVerdict,
  checkChain,
  formatChain,
  parseChain,
  type Chain,
  type ChainStep,
  type StageVars,
  type StageVar,
  type StageTemplate,
  type AlignCotTemplates,
  type ParseChainOptions,
} from './mote/aligncot.js';
