#!/bin/bash
# The H200 search of the embedded recipe's data and adapter (2026-12-03; README "Measured so
# far"): the CUDA engine (fast; it packs rows whole, so a recipe takes more steps than on the
# 2-core CPU), each variant evaluated on the GPU through transformers (`--backend hf`: Ollama's
# sampler and cut at num_ctx, the 303-item `mesh` suite, 3 samples, both profiles).
#   bash benchmarks/recipe_search_h200.sh 1   # round 1: knowledge share, layers, rank, lr, epochs
#   bash benchmarks/recipe_search_h200.sh 2   # round 2: full fine-tune against LoRA, at shards 2
#   bash benchmarks/recipe_search_h200.sh 3   # round 3: round 2's full fine-tunes again (device time
#                                             # ran out in 2), and the /meshtastic pointer data
#   bash benchmarks/recipe_search_h200.sh 4   # round 4: smaller shares of the pointer
# Variants share the one GPU (8, 6, 7 and 3 at once), two CPU threads each.
set -euo pipefail
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 TOKENIZERS_PARALLELISM=false
FIELDS='type: chat_template, field_messages: conversations, message_property_mappings: {role: from, content: value}'
CHATS="{path: ../data/mesh_conversations.jsonl, $FIELDS}"
# The knowledge rows in `shards` parts, the first of them trained (1: all 979 rows).
knowledge() { echo "datasets=[$CHATS, {path: ../data/mesh_knowledge.jsonl, $FIELDS, shards: $1}]"; }
EVERY_LAYER='peft_layers_to_transform='
# The pointer variants' training files (benchmarks/pointer_data.py), each with 1/8 of the
# knowledge rows unless said.
pointed() {
  echo "datasets=[{path: ../runs/pointer-data/conv_$1.jsonl, $FIELDS}, {path: ../data/mesh_knowledge.jsonl, $FIELDS, shards: ${2:-8}}]"
}
search() {
  python3 benchmarks/recipe_search.py --engine cuda --backend hf --per-gpu "$1" --parallel "$1" \
    --out "$2" --work "runs/search-h200-$3" "${@:4}"
}
case "${1:-1}" in
1) search 8 benchmarks/results/recipe_search_h200_round1.json 1 \
     "k8:" \
     "k4:$(knowledge 4)" \
     "k2:$(knowledge 2)" \
     "k1:$(knowledge 1)" \
     "k1-e2:$(knowledge 1),num_epochs=2" \
     "k1-all30:$(knowledge 1),$EVERY_LAYER" \
     "k1-all30-r64:$(knowledge 1),$EVERY_LAYER,lora_r=64,lora_alpha=128" \
     "k1-lr1e-3:$(knowledge 1),learning_rate=0.001" ;;
2) search 6 benchmarks/results/recipe_search_h200_round2.json 2 \
     "full-k2-lr2e-5:$(knowledge 2),adapter=,learning_rate=0.00002,bf16=false" \
     "full-k2-lr5e-5:$(knowledge 2),adapter=,learning_rate=0.00005,bf16=false" \
     "full-k2-lr1e-4:$(knowledge 2),adapter=,learning_rate=0.0001,bf16=false" \
     "k2-all30:$(knowledge 2),$EVERY_LAYER" \
     "k2-all30-r64-lr5e-4:$(knowledge 2),$EVERY_LAYER,lora_r=64,lora_alpha=128,learning_rate=0.0005" \
     "k2-r32:$(knowledge 2),lora_r=32,lora_alpha=64,learning_rate=0.001" ;;
3) python3 benchmarks/pointer_data.py runs/pointer-data
   search 7 benchmarks/results/recipe_search_h200_round3.json 3 \
     "k8:" \
     "k8-point:$(pointed point)" \
     "k2-point:$(pointed point 2)" \
     "k2:$(knowledge 2)" \
     "full-k2-lr2e-5:$(knowledge 2),adapter=,learning_rate=0.00002,bf16=false" \
     "full-k2-lr5e-5:$(knowledge 2),adapter=,learning_rate=0.00005,bf16=false" \
     "full-k2-lr1e-4:$(knowledge 2),adapter=,learning_rate=0.0001,bf16=false" ;;
4) python3 benchmarks/pointer_data.py runs/pointer-data
   search 3 benchmarks/results/recipe_search_h200_round4.json 4 \
     "point3d:$(pointed point3d)" \
     "point3k:$(pointed point3k)" \
     "point3dup2:$(pointed point3dup2)" ;;
*) echo "usage: $0 1|2|3|4" >&2; exit 2 ;;
esac
