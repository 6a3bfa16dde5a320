// The Node entry (`mote-lora`): everything in src/api_common.ts (shared with the browser entry)
// plus the Node backends, file-system helpers, the CLI's building blocks and the serving engine.
export * from './api_common.js';
export { VERSION } from './version.js';
export { openBackend, probeBackends, BACKEND_KINDS, type OpenOptions, type Availability } from './backend/select.js';
export { type WebGPUOptions } from './backend/webgpu.js';
export * from './io/safetensors.js';
export * from './io/peft.js';
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
export { AdapterStacks, type LayerStacks, type ExpertFactors, type TrainBatchRouting } from './adapters/stacks.js';
export { NEW_LORA_DIR, type CreateLoraOptions } from './adapters/adapter_set.js';
export { moteRoutingSlots, type MoteRoutingOptions, type CreateMoteOptions } from './mote/bundle.js';
export { NodeDirSource, BaseSource, readSourceJson, type FileBytes } from './io/source.js';
export { NodeDirSink, type DirWriter, type FileData, type SinkOptions } from './io/sink.js';
export { moteJson, parseMoteJson, MOTE_FILE, MOTE_FORMAT_VERSION } from './mote/format.js';
export { saveTokenizer, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, CHAT_TEMPLATE_FILE } from './io/tokenizer.js';
export { dataFingerprint, type TrainerState } from './train/trainer.js';
export { readCheckpointState, CHECKPOINT_STATE_FILE, CHECKPOINT_FORMAT, type CheckpointTrainer } from './train/checkpoint.js';
export { stepSkipSegments } from './train/step_skip.js';
export {
  ChainTooLongError,
  chainFromJson,
  parseChainsJsonl,
  readChainsJsonl,
  chainToJson,
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
  toyWords,
  toyWordsOf,
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
  scoreToy,
  TOY_VARIANTS,
  type ToyOutput,
  type ScoreToyOptions,
  type EvaluateToyOptions,
  type ToyVariant,
  type TrainVariantOptions,
  type TrainedVariant,
} from './mote/eval.js';
export { hfConfigJson } from './model/save.js';
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
