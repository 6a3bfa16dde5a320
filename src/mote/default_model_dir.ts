// Where the bundled default model lives: a leaf module, so that finding the default model
// (CLI, openChat) does not load the trainer and toy data that build it (default_model.ts).
import { fileURLToPath } from 'node:url';

/** assets/default-model inside the installed package (this file is dist/src/mote/default_model_dir.js). */
export const DEFAULT_MODEL_DIR = fileURLToPath(new URL('../../../assets/default-model', import.meta.url));
