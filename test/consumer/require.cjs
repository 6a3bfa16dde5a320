// require() of the ESM package (Node ≥ 20.19 / 22.12 load ES modules synchronously).
const mote = require('mote-lora');
if (typeof mote.openBackend !== 'function') throw new Error('require("mote-lora") lacks openBackend');
console.log(`require("mote-lora"): ${Object.keys(mote).length} exports`);
