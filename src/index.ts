export { VERSION } from './version.js';
export * from './errors.js';
export { type DType, type HostData, DTYPES, WEIGHT_DTYPES, f32ToBf16Bits, bf16BitsToF32, f32ToF16Bits, f16BitsToF32 } from './dtype.js';
export { Tensor } from './tensor.js';
export type { Backend, BackendInfo, BackendKind, BackendRequest } from './backend/backend.js';
export { openBackend, probeBackends, BACKEND_KINDS, type OpenOptions, type Availability } from './backend/select.js';
export type { WebGPUOptions } from './backend/webgpu.js';
export * as reference from './reference/index.js';
export * from './ops/index.js';
export * from './io/safetensors.js';
export * from './io/peft.js';
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
  openChat,
  openModelFolder,
  MoteChat,
  type OpenedModel,
  type OpenChatOptions,
  type AskOptions,
  type AnswerStep,
  type AnswerChunk,
  type ChatAnswer,
} from './generate/chat.js';
export * from './mote/steps.js';
export { AdapterStacks, type LayerStacks, type ExpertFactors, type TrainBatchRouting } from './adapters/stacks.js';
export { AdapterSet, loadPeftAdapters, createLora, NEW_LORA_DIR, type CreateLoraOptions } from './adapters/adapter_set.js';
export { MoteBundle, createMote, addStepTokens, moteRoutingSlots, type MoteRoutingOptions, type CreateMoteOptions } from './mote/bundle.js';
export { saveMote, loadMote, exportPeft } from './mote/bundle_io.js';
// Where loaders read and savers write (src/io/source.ts, src/io/sink.ts): paths, URLs, Blobs, bytes, OPFS, memory.
export {
  openSource,
  UrlSource,
  BlobSource,
  BytesSource,
  NodeDirSource,
  BaseSource,
  readSourceJson,
  type FileSource,
  type SourceInput,
  type UrlSourceOptions,
  type FileBytes,
} from './io/source.js';
export {
  openSink,
  MemorySink,
  OpfsSink,
  OpfsSource,
  NodeDirSink,
  tarFiles,
  type FileSink,
  type DirWriter,
  type FileData,
  type SinkOptions,
} from './io/sink.js';
export { SafetensorsFile, SourceWeights, readSafetensorsFrom, safetensorsParts } from './io/safetensors.js';
export { moteJson, parseMoteJson, MOTE_FILE, MOTE_FORMAT_VERSION } from './mote/format.js';
export {
  loadTokenizer,
  saveTokenizer,
  MoteTokenizer,
  TOKENIZER_FILE,
  TOKENIZER_CONFIG_FILE,
  CHAT_TEMPLATE_FILE,
  type ChatMessage,
  type EncodeOptions,
  type DecodeOptions,
  type ChatTemplateOptions,
} from './io/tokenizer.js';
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
export {
  Trainer,
  dataFingerprint,
  type TrainExample,
  type TrainerOptions,
  type TrainProgress,
  type TrainerState,
} from './train/trainer.js';
export {
  saveCheckpoint,
  loadCheckpoint,
  readCheckpointState,
  CHECKPOINT_STATE_FILE,
  CHECKPOINT_FORMAT,
  type CheckpointTrainer,
} from './train/checkpoint.js';
export { learningRate, checkSchedule, type ScheduleOptions } from './train/schedule.js';
export { stepSkipSegments } from './train/step_skip.js';
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
export {
  ChainTooLongError,
  chainFromJson,
  parseChainsJsonl,
  readChainsJsonl,
  chainToJson,
  stepTokenIds,
  promptIds,
  chainExample,
  chainExamples,
  packExamples,
  type ChainExample,
  type ChainRecord,
  type ChainExampleOptions,
  type ChainExamplesResult,
  type StepTokenIds,
  type PackedBatch,
} from './mote/chains.js';
export {
  readPrompts,
  parsePrompts,
  parseHHTranscript,
  hhPrompt,
  promptMessages,
  plainPrompt,
  readTextFile,
  textLines,
  type PromptRecord,
  type PromptRead,
  type SkippedLine,
  type PromptFormat,
  type ReadPromptsOptions,
} from './io/prompts.js';
export {
  TOY_OWNERS,
  TOY_DOMAINS,
  TOY_REFUSAL,
  isRiskyQuestion,
  isRefusal,
  toyQuestions,
  toyChain,
  toySplit,
  toyWords,
  toyWordsOf,
  type ToyQuestion,
  type ToyDomain,
  type ToySplitOptions,
} from './mote/toy.js';
export {
  selfAlign,
  SELF_ALIGN_STAGES,
  type SelfAlignPrompt,
  type SelfAlignOptions,
  type SelfAlignResult,
  type SelfAlignProgress,
  type SelfAlignStage,
  type GenerateFn,
} from './mote/self_align.js';
export {
  evaluateToy,
  scoreToy,
  trainVariant,
  toyEvalTable,
  TOY_VARIANTS,
  type ToyEvalResult,
  type ToyOutput,
  type ScoreToyOptions,
  type EvaluateToyOptions,
  type ToyVariant,
  type TrainVariantOptions,
  type TrainedVariant,
} from './mote/eval.js';
export { saveModel, hfConfigJson } from './model/save.js';
export {
  DEFAULT_MODEL_DIR,
  loadDefaultModel,
  toyTokenizer,
  toyCorpus,
  pretrainDefaultModel,
  toyPrompt,
  toyPlainAnswer,
} from './mote/default_model.js';
export { Engine, EngineError, type EngineOptions, type EngineRequest, type EngineStream, type AdapterInfo } from './serve/engine.js';
export { startServer, serveHandler, type ServeOptions, type ServeContext } from './serve/http.js';
export { mergeStepExperts, type MergedAdapter } from './mote/merged_steps.js';
