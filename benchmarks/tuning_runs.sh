#!/usr/bin/env bash
# The fine-tuning runs behind benchmarks/README.md's "Fine-tuning" section, in order, each resumable: a tuned
# folder that exists is kept, a run with a work folder continues from its last checkpoint (--resume), and a
# benchmark whose line is already in results/tuning.jsonl is not run again. Long: hours on a 2-core CPU.
#
#   bash benchmarks/tuning_runs.sh [STEP ...]      steps: scifact scifact-t10 scifact-r2 scifact-r3 default nfcorpus
#                                                   nfcorpus-r2 nfcorpus-r3 vaswani vaswani-lead
#                                                   vaswani-lead-default nfcorpus-lead nfcorpus-lead-default
#                                                   from-corpus-base scifact-corpus nfcorpus-generate
#                                                   vaswani-generate nfcorpus-lead-r2 vaswani-lead-r2
#                                                   vaswani-lead-200 nfcorpus-lead-80 nfcorpus-mix
#                                                   vaswani-mix nfcorpus-crop scifact-lead default-v2 default-v3
#                                                   scifact-acc4 scifact-gc4 scifact-acc4-s1
#                                                   scifact-gc4-s1 scifact-bf16loss scifact-f32loss
#                                                   scifact-bf16loss-s1 scifact-f32loss-s1 nfcorpus-default
#                                                   nfcorpus-qwen
#                                                   zero-shot evals
#   DTYPE=bfloat16 bash benchmarks/tuning_runs.sh zero-shot evals   # benchmarks encode in bfloat16 (~1.8x faster
#                                                   # on AVX512-BF16); float32 lines and indexes are kept apart
#
# Every choice (steps, learning rate, fusion weights) is made on training data or dev queries carved from it;
# test qrels are read only by benchmarks/tuning.py for the reported numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # benchmarks/*.py import hylex from this checkout
DATA=${DATA:-../shared/data}
RUNS=${RUNS:-runs}
OUT=benchmarks/results/tuning.jsonl
DTYPE=${DTYPE:-float32}  # the benchmarks' encoder dtype (training's autocast is its own option)
mkdir -p "$RUNS"

tune() {  # tune OUT ARGS...: train unless OUT exists; resume when its work folder has a checkpoint
  local out=$1; shift
  if [ -e "$out" ]; then echo "== $out exists: kept"; return; fi
  local resume=()
  if ls "$out.work/checkpoints"/step-* >/dev/null 2>&1; then resume=(--resume); fi
  echo "== tune $out ${resume[*]}"
  python3 -m hylex --no-progress tune "$@" --out "$out" "${resume[@]}"
}

bench() {  # bench TAG MODEL CHOOSE DATASET...: one line per dataset in $OUT, skipped when already there
  local tag=$1 model=$2 choose=$3; shift 3
  for ds in "$@"; do
    local name; name=$(basename "$ds")
    if [ -f "$OUT" ] && python3 - "$OUT" "$tag" "$name" "$choose" "$DTYPE" <<'EOF'
import json, sys
sys.path.insert(0, "benchmarks")
from tuning_table import fusion_source
out, tag, name, choose, dtype = sys.argv[1:]
done = any(r.get("model") == tag and r.get("dataset") == name and r.get("dtype", "float32") == dtype and
           fusion_source(r) == choose for r in map(json.loads, open(out)))
sys.exit(0 if done else 1)
EOF
    then echo "== $tag on $name ($choose, $DTYPE): done"; continue; fi
    echo "== bench $tag on $name ($choose, $DTYPE)"
    python3 benchmarks/tuning.py --model "$model" --tag "$tag" --datasets "$ds" --choose-on "$choose" \
      --dtype "$DTYPE" --out "$OUT"
  done
}

first_index() {  # first_index FIRST DATASET [MODEL]: sets $idx to the corpus index of $RUNS/FIRST (or of MODEL, e.g.
                 # a packaged name) that tuning.py or pseudo_fusion.py built (DATASET-FIRST[-DTYPE]), building it
                 # when missing (a second round mines it)
  idx=benchmarks/.work/tuning/$(basename "$2")-$1$([ "$DTYPE" = float32 ] || echo "-$DTYPE")
  [ -d "$idx" ] || python3 -m hylex --no-progress index "$2/corpus.jsonl" --index "$idx" --model "${3:-$RUNS/$1}" \
    --dtype "$DTYPE"
}

next_round() {  # next_round TAG FIRST DATASET [TUNE ARGS...]: $RUNS/FIRST trained 100 steps more (a further
                # adapter; later TUNE ARGS override these) on negatives mined with its own hybrid search over the
                # test corpus (first_index), then benchmarked with fusions chosen on train and with its card's
  local tag=$1 first=$2 ds=$3 idx; shift 3
  first_index "$first" "$ds"
  tune "$RUNS/$tag" "$ds" --split train --steps 100 --sparse-temperature 10 --mine-index "$idx" \
    --model "$RUNS/$first" --batch 16 --negatives 3 --save-every 25 --eval-every 50 --lr 1e-4 "$@"
  bench "$tag" "$RUNS/$tag" train "$ds"
  bench "$tag" "$RUNS/$tag" card "$ds"
}

nfcorpus_gate() {  # nfcorpus_gate TAG: $RUNS/TAG's card fusion chosen on NFCorpus train, then a plain search on
                   # NFCorpus dev against the shipped default's; only if it wins by more than 0.03 (default_gate.py
                   # exits 3 otherwise, which stops this script) one test bench with the fusion chosen on train
  python3 benchmarks/default_gate.py --candidate "$RUNS/$1" --tag "$1" \
    --shipped smollm2-135m-hylex --choose-on "$NFCORPUS" --gate "$NFCORPUS" --margin 0.03 --dtype "$DTYPE" \
    --out benchmarks/results/default_gate.jsonl
  bench "$1" "$RUNS/$1" train "$NFCORPUS"
}

corpus_tune() {  # corpus_tune TAG DATASET PAIRS STEPS [TUNE ARGS...]: a --from-corpus tune on PAIRS (--pairs-from)
                # with the sparse temperature that kept NFCorpus's sparse arm, over COMMON's settings
  local tag=$1 ds=$2 pairs=$3 steps=$4; shift 4
  tune "$RUNS/$tag" --from-corpus "$ds/corpus.jsonl" --pairs-from "$pairs" --steps "$steps" --sparse-temperature 10 \
    "${COMMON[@]}" "$@"
}

lead_tune() {  # lead_tune TAG DATASET STEPS [TUNE ARGS...]: corpus_tune on lead pairs (a document's opening words ->
              # the rest)
  local tag=$1 ds=$2; shift 2
  corpus_tune "$tag" "$ds" lead "$@"
}

corpus_round() {  # corpus_round TAG FIRST DATASET: a second --from-corpus round, $RUNS/FIRST trained 40 steps more
                  # on the same lead pairs with negatives mined with its own hybrid search over the corpus
  local tag=$1 first=$2 ds=$3 idx
  first_index "$first" "$ds"
  lead_tune "$tag" "$ds" 40 --model "$RUNS/$first" --mine-index "$idx" --save-every 10 --eval-every 20
}

pseudo() {  # pseudo TAG MODEL DATASET [PAIRS]: benchmarks/pseudo_fusion.py (train queries; lead pairs unless
           # PAIRS names another construction), skipped when its line is there
  local tag=$1 model=$2 ds=$3 pairs=${4:-lead}
  if [ -f benchmarks/results/pseudo_fusion.jsonl ] && python3 - "$tag" "$(basename "$ds")" "$pairs" <<'EOF'
import json, sys
tag, name, pairs = sys.argv[1:]
sys.exit(0 if any(r["model"] == tag and r["dataset"] == name and r["pairs"] == pairs and "base" in r
                  for r in map(json.loads, open("benchmarks/results/pseudo_fusion.jsonl"))) else 1)
EOF
  then echo "== pseudo_fusion $tag on $(basename "$ds"): done"; return; fi
  python3 benchmarks/pseudo_fusion.py --data "$ds" --model "$model" --tag "$tag" --pairs "$pairs" --dtype "$DTYPE" \
    --out benchmarks/results/pseudo_fusion.jsonl
}

set_card_fusion() {  # set_card_fusion MODEL TAG DATASET: MODEL's card fusion := the one tuning.py chose on DATASET's
                    # train split for TAG (the shipped default's rule); the dev choice is kept as fusion_on_dev
  python3 - "$@" "$OUT" "$DTYPE" <<'EOF'
import json, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from tuning_table import fusion_source, set_card_fusion
model, tag, name, out, dtype = sys.argv[1:]
rows = [r for r in map(json.loads, open(out)) if r.get("model") == tag and r.get("dataset") == name
        and r.get("dtype", "float32") == dtype and fusion_source(r) == "train"]
if not rows:
    sys.exit(f"set_card_fusion: no {tag} line chosen on {name} train in {out}")
chosen, where = rows[-1]["systems"]["default"], rows[-1]["fusion_chosen_on"]
card = json.loads((Path(model) / "hylex-model.json").read_text())
if (card.get("fusion") or {}).get("chosen_on") == where:
    print(f"== {model}: card fusion already chosen on {where}"); sys.exit(0)
set_card_fusion(model, {"method": "convex", "arms": chosen["arms"], "weights": chosen["weights"], "metric": "nDCG@10",
                        "train": chosen["chosen_score"], "chosen_on": where,
                        "note": "chosen on a train split by benchmarks/tuning.py, written by tuning_runs.sh's "
                                "set_card_fusion (the shipped default's rule); the dev choice is fusion_on_dev"})
print(f"== {model}: card fusion {chosen['arms']} {chosen['weights']} ({where})")
EOF
}

SCIFACT=$DATA/beir/scifact NFCORPUS=$DATA/beir/nfcorpus VASWANI=$DATA/beir/vaswani
T=$DATA/train  # the shipped default's data: the eight redistributable sources of shared/data/train, weighted
DEFAULT_DATA=("$T/scitldr.jsonl" "$T/fever_dev_rte.jsonl" "$T/pubmedqa.jsonl" "$T/medquad.jsonl" "$T/covid_qa.jsonl"
              "$T/selqa.jsonl" "$T/xquad_en.jsonl" "$T/rqe.jsonl"
              --source-weights 0.25,0.2,0.15,0.1,0.08,0.08,0.07,0.07 --total 4000 --max-dev 120)
COMMON=(--model smollm2-135m --batch 16 --negatives 3 --save-every 25 --eval-every 50 --lr 1e-4)  # the zero-shot base
steps=${*:-scifact default zero-shot evals nfcorpus vaswani}
for step in $steps; do
  case $step in
    scifact)  # in-domain: SciFact's train qrels (dev carved from them), BM25-mined negatives from its corpus
      tune "$RUNS/scifact-tuned" "$SCIFACT" --split train --steps 150 --sparse-temperature 1 "${COMMON[@]}"
      bench scifact-tuned "$RUNS/scifact-tuned" train "$SCIFACT" ;;
    scifact-t10)  # the same with the sparse temperature NFCorpus needed (10: also the probe's choice on SciFact
                  # train, 6.45/2.25/1.13/2.07/3.42 for 1/3/10/30/100); unscaled, SciFact's sparse arm fell 0.543 -> 0.478
      tune "$RUNS/scifact-t10" "$SCIFACT" --split train --steps 150 --sparse-temperature 10 "${COMMON[@]}"
      bench scifact-t10 "$RUNS/scifact-t10" train "$SCIFACT" ;;
    scifact-acc4|scifact-gc4|scifact-acc4-s1|scifact-gc4-s1)  # GradCache's question, same data, steps and
      # settings: 16 queries x (1 + 3) per step in 4 micro-batches, plain accumulation (each micro-batch's 4 queries
      # against its own 16 passages) or --grad-cache (every query against the step's 64); 50 steps, dev only (no
      # benchmark on test); -s1: the same pair with seed 1 (another dev split, batches and initialisation)
      gc=(); [[ "$step" == scifact-gc4* ]] && gc=(--grad-cache)
      seed=0; [[ "$step" == *-s1 ]] && seed=1
      tune "$RUNS/$step" "$SCIFACT" --split train --steps 50 --sparse-temperature 10 --accumulate 4 \
        --no-gradient-checkpointing --seed "$seed" "${gc[@]}" "${COMMON[@]}" ;;
    scifact-bf16loss|scifact-f32loss|scifact-bf16loss-s1|scifact-f32loss-s1)  # the loss's score precision: the
      # default one-pass step (16 queries x (1 + 3), gradient checkpointing), 50 steps, dev only, identical but for
      # --float32-loss (the InfoNCE's scores in float32; without it, bfloat16 matmuls under the training autocast);
      # -s1: the same pair with seed 1
      f32=(); [[ "$step" == scifact-f32loss* ]] && f32=(--float32-loss)
      seed=0; [[ "$step" == *-s1 ]] && seed=1
      tune "$RUNS/$step" "$SCIFACT" --split train --steps 50 --sparse-temperature 10 --seed "$seed" "${f32[@]}" \
        "${COMMON[@]}" ;;
    scifact-r2)  # a second round (ANCE / Tevatron style): runs/scifact-t10 trained 100 steps more (a new adapter
                 # over its own), on negatives mined with its hybrid search over the SciFact corpus
      next_round scifact-r2 scifact-t10 "$SCIFACT" ;;
    scifact-r3)  # a third round over scifact-r2, on its hybrid's negatives, with passages cut at 256 tokens instead
                 # of 128: 97% of SciFact's documents are longer than 128 tokens (median 298, corpus only), and the
                 # index encodes up to 512; 40 steps (a 256-token step took ~78 s here, ~1.6x), dev at 20 and 40
      next_round scifact-r3 scifact-r2 "$SCIFACT" --passage-tokens 256 --steps 40 --save-every 10 --eval-every 20 ;;
    nfcorpus)  # 100 steps, and a small dev (20 queries, 100 distractors): NFCorpus judges ~50 documents per query,
               # so 20 dev queries already pool ~1,000 passages (~5 min per evaluation here). Sparse temperature 10:
               # unscaled, the sparse loss started at 11-22 here (far above ln 64, the loss of all-zero weights) and
               # drove every own-word weight to zero by step 22-55 in three runs (weights 1.0 and 0.1; logs in
               # benchmarks/README.md); 10 gave the lowest starting loss of 1/3/10/30/100 on 8 train batches
      tune "$RUNS/nfcorpus-t10" "$NFCORPUS" --split train --steps 100 --max-dev 20 --dev-distractors 100 \
        --sparse-temperature 10 "${COMMON[@]}"
      bench nfcorpus-t10 "$RUNS/nfcorpus-t10" train "$NFCORPUS" ;;
    nfcorpus-r2)  # the second round of scifact-r2 on NFCorpus, with nfcorpus-t10's small dev
      next_round nfcorpus-r2 nfcorpus-t10 "$NFCORPUS" --max-dev 20 --dev-distractors 100 ;;
    nfcorpus-r3)  # SciFact round three's change on NFCorpus: over nfcorpus-r2, its hybrid's negatives, 256-token
                  # passages (83% of NFCorpus's documents are longer than 128 tokens, median 187; corpus only)
      next_round nfcorpus-r3 nfcorpus-r2 "$NFCORPUS" --max-dev 20 --dev-distractors 100 --passage-tokens 256 \
        --steps 60 --save-every 10 --eval-every 30 ;;
    nfcorpus-default)  # NFCorpus train over the shipped default instead of the zero-shot model (benchmarks/README.md,
                       # rule written before it ran): round one's recipe (100 steps, 16 x (1 + 3), lr 1e-4, sparse
                       # temperature 10, 20 dev queries + 100 distractors) on negatives mined with the shipped model's
                       # own hybrid over the NFCorpus corpus; its card fusion chosen on NFCorpus train; one test run
                       # only if it beats the shipped model on NFCorpus dev by more than 0.03
      first_index smollm2-135m-hylex "$NFCORPUS" smollm2-135m-hylex
      tune "$RUNS/nfcorpus-default" "$NFCORPUS" --split train --steps 100 --sparse-temperature 10 --mine-index "$idx" \
        --model smollm2-135m-hylex --batch 16 --negatives 3 --save-every 25 --eval-every 50 --lr 1e-4 \
        --max-dev 20 --dev-distractors 100
      nfcorpus_gate nfcorpus-default ;;
    # the from-corpus steps below pass --fusion-from dev: they were measured with the fusion their pseudo-query dev
    # chose, before `hylex tune` kept the base's for a corpus-built dev by default (the base-fusion lines: step
    # from-corpus-base)
    vaswani)  # no labels: pairs from the corpus alone (no titles there: two random crops of a document, what
              # --pairs-from auto took then; auto now takes lead pairs, so crop is named)
      tune "$RUNS/vaswani-tuned" --from-corpus "$VASWANI/corpus.jsonl" --pairs-from crop --steps 100 \
        --sparse-temperature 1 "${COMMON[@]}" --fusion-from dev
      bench vaswani-tuned "$RUNS/vaswani-tuned" card "$VASWANI" ;;
    vaswani-lead)  # no labels, the crops' failure read: query-length pairs (a document's opening 4-12 words -> the
                   # rest; Vaswani runs each title into its text) and the sparse temperature that kept NFCorpus's arm
      lead_tune vaswani-lead "$VASWANI" 100 --fusion-from dev
      bench vaswani-lead "$RUNS/vaswani-lead" card "$VASWANI" ;;
    vaswani-lead-default)  # no Vaswani labels: vaswani-lead's pairs, over the shipped default instead of the
                           # zero-shot base (it learnt from other sets' labelled pairs; search's default model); 40
                           # steps, dev at 20/40 (vaswani-lead's dev had most of its gain by step 50); card fusion
      lead_tune vaswani-lead-default "$VASWANI" 40 --model smollm2-135m-hylex --save-every 10 --eval-every 20 \
        --fusion-from dev
      bench vaswani-lead-default "$RUNS/vaswani-lead-default" card "$VASWANI" ;;
    nfcorpus-lead)  # a check on train queries, not a test run: vaswani-lead's recipe at 40 steps (lead
                    # pairs, no labels) over the zero-shot base on NFCorpus, whose train qrels score the fusion a
                    # from-corpus tune keeps (benchmarks/pseudo_fusion.py --model runs/nfcorpus-lead); no test bench
      lead_tune nfcorpus-lead "$NFCORPUS" 40 --save-every 10 --eval-every 20 --fusion-from dev
      pseudo nfcorpus-lead "$RUNS/nfcorpus-lead" "$NFCORPUS" ;;
    nfcorpus-lead-default)  # the same check for vaswani-lead-default's recipe (lead pairs over the shipped default)
      lead_tune nfcorpus-lead-default "$NFCORPUS" 40 --model smollm2-135m-hylex --save-every 10 --eval-every 20 \
        --fusion-from dev
      pseudo nfcorpus-lead-default "$RUNS/nfcorpus-lead-default" "$NFCORPUS" ;;
    from-corpus-base)  # the from-corpus models above with the fusion their base carries (what `hylex tune
                       # --from-corpus` now stores by default), decided on the two nfcorpus-lead checks on train
                       # queries; the zero-shot model's check beside them
      bench vaswani-lead "$RUNS/vaswani-lead" base "$VASWANI"
      bench vaswani-lead-default "$RUNS/vaswani-lead-default" base "$VASWANI"
      pseudo zero-shot smollm2-135m "$NFCORPUS" ;;
    scifact-corpus)  # no labels on a third collection, measured on its train queries only (no test bench): what a
                     # user with SciFact's corpus alone gets from the defaults (--pairs-from auto: title -> abstract
                     # here; --fusion-from auto: the base's fusion), 40 steps as the lead checks above
      tune "$RUNS/scifact-corpus" --from-corpus "$SCIFACT/corpus.jsonl" --steps 40 --sparse-temperature 10 \
        "${COMMON[@]}" --save-every 10 --eval-every 20
      pseudo scifact-corpus "$RUNS/scifact-corpus" "$SCIFACT" title ;;
    nfcorpus-generate)  # a check on train queries, not a test run: nfcorpus-lead's recipe with queries an instruct
                        # LLM wrote (--pairs-from generate: qwen2.5-0.5b, 840 documents, a 200-query dev like the
                        # lead runs'); adopted for Vaswani only if its plain search beats nfcorpus-lead's there
      corpus_tune nfcorpus-generate "$NFCORPUS" generate 40 --dev 200 --save-every 10 --eval-every 20
      pseudo nfcorpus-generate "$RUNS/nfcorpus-generate" "$NFCORPUS" ;;
    nfcorpus-lead-r2)  # a check on train queries, not a test run: a second round of nfcorpus-lead (the same lead pairs,
                       # 40 steps) on negatives mined with its own hybrid search over the corpus (the index its
                       # pseudo_fusion line built); adopted for Vaswani only if its plain search beats nfcorpus-lead's
      corpus_round nfcorpus-lead-r2 nfcorpus-lead "$NFCORPUS"
      pseudo nfcorpus-lead-r2 "$RUNS/nfcorpus-lead-r2" "$NFCORPUS" ;;
    vaswani-lead-r2)  # nfcorpus-lead-r2's recipe over vaswani-lead (run because it passed that check), one test
                      # bench with its stored fusion (the one kept from the chain's base, chosen on real queries)
      corpus_round vaswani-lead-r2 vaswani-lead "$VASWANI"
      bench vaswani-lead-r2 "$RUNS/vaswani-lead-r2" card "$VASWANI" ;;
    vaswani-lead-200)  # vaswani-lead's recipe for 200 steps instead of 100 (its dev still rose at step 100, where the
                       # lr had decayed to ~0), the base's fusion (the --from-corpus default); scored on Vaswani test
                       # once, with that stored fusion, only if its kept dev dense+sparse+bm25 beats vaswani-lead's
      lead_tune vaswani-lead-200 "$VASWANI" 200
      if python3 - "$RUNS/vaswani-lead-200" "$RUNS/vaswani-lead" <<'EOF'
import json, sys
new, old = (json.load(open(f"{d}/hylex-model.json"))["dev"]["after"]["dense+sparse+bm25"] for d in sys.argv[1:])
print(f"== dev dense+sparse+bm25: {new} (vaswani-lead {old})")
sys.exit(0 if new > old else 1)
EOF
      then bench vaswani-lead-200 "$RUNS/vaswani-lead-200" card "$VASWANI"
      else echo "== vaswani-lead-200: dev not above vaswani-lead's, no test run"; fi ;;
    nfcorpus-lead-80)  # a check on train queries, not a test run: nfcorpus-lead's recipe for 80 steps instead of 40,
                       # asking whether more lead steps lower the dense arm on real queries as on Vaswani test
                       # (vaswani-lead-200); the base's fusion (the --from-corpus default)
      lead_tune nfcorpus-lead-80 "$NFCORPUS" 80 --save-every 10 --eval-every 20
      pseudo nfcorpus-lead-80 "$RUNS/nfcorpus-lead-80" "$NFCORPUS" ;;
    nfcorpus-mix)  # a check on train queries, not a test run: nfcorpus-lead's recipe (40 steps, the base's fusion)
                   # on a mix, half lead pairs and half generated questions (--pairs-from lead+generate, each on its
                   # own documents, generic questions made up by further documents); adopted for Vaswani only if its
                   # plain search on NFCorpus's train queries beats nfcorpus-lead's (0.3394)
      corpus_tune nfcorpus-mix "$NFCORPUS" lead+generate 40 --dev 200 --save-every 10 --eval-every 20
      pseudo nfcorpus-mix "$RUNS/nfcorpus-mix" "$NFCORPUS" ;;
    vaswani-mix)  # no labels: nfcorpus-mix's mix at vaswani-lead's 100 steps, only if nfcorpus-mix passed its check;
                  # one Vaswani test bench with the stored fusion (the base's, the --from-corpus default)
      if python3 - <<'EOF'
import json, sys
rows = {r["model"]: r["base"]["on_real"] for r in map(json.loads, open("benchmarks/results/pseudo_fusion.jsonl"))
        if r["dataset"] == "nfcorpus" and r.get("base")}
mix, lead = rows.get("nfcorpus-mix"), rows["nfcorpus-lead"]
print(f"== NFCorpus train, plain search: nfcorpus-mix {mix}, nfcorpus-lead {lead}")
sys.exit(0 if mix is not None and mix > lead else 1)
EOF
      then
        corpus_tune vaswani-mix "$VASWANI" lead+generate 100 --dev 200
        bench vaswani-mix "$RUNS/vaswani-mix" card "$VASWANI"
      else echo "== vaswani-mix: nfcorpus-mix did not pass its check, no Vaswani run"; fi ;;
    nfcorpus-crop)  # a check on train queries, not a test run: nfcorpus-lead's recipe (40 steps, sparse temperature 10,
                    # the base's fusion) on crop pairs, what --pairs-from auto builds for a corpus without titles; the
                    # crops' only run (vaswani) predates the temperature. auto's fallback becomes lead if this scores
                    # under nfcorpus-lead (0.3394) on NFCorpus's train queries
      corpus_tune nfcorpus-crop "$NFCORPUS" crop 40 --save-every 10 --eval-every 20
      pseudo nfcorpus-crop "$RUNS/nfcorpus-crop" "$NFCORPUS" ;;
    scifact-lead)  # a check on train queries, not a test run: scifact-corpus's run (40 steps) on lead pairs instead of
                   # the title pairs auto builds there, to set the two beside each other on one titled collection
      lead_tune scifact-lead "$SCIFACT" 40 --save-every 10 --eval-every 20
      pseudo scifact-lead "$RUNS/scifact-lead" "$SCIFACT" title ;;
    vaswani-generate)  # no labels: nfcorpus-generate's recipe on Vaswani, to be run only if that check passes (it
                       # did not, 2026-12-06: never run); one test bench with the fusion a from-corpus tune keeps
      corpus_tune vaswani-generate "$VASWANI" generate 40 --dev 200 --save-every 10 --eval-every 20
      bench vaswani-generate "$RUNS/vaswani-generate" base "$VASWANI" ;;
    nfcorpus-qwen)  # a larger base on NFCorpus (benchmarks/README.md, rule written before it ran): round one's
                    # recipe over the zero-shot qwen2.5-0.5b, 40 steps (a qwen step is 3-4x smollm2's here),
                    # evaluations at 20 and 40; the same card-fusion rule and 0.03 dev gate as nfcorpus-default
      tune "$RUNS/nfcorpus-qwen" "$NFCORPUS" --split train --steps 40 --sparse-temperature 10 --model qwen2.5-0.5b \
        --batch 16 --negatives 3 --save-every 10 --eval-every 20 --lr 1e-4 --max-dev 20 --dev-distractors 100
      nfcorpus_gate nfcorpus-qwen ;;
    default)  # the shipped default: the redistributable sources of shared/data/train only, MedQuAD capped
      tune "$RUNS/default-tuned" --model smollm2-135m "${DEFAULT_DATA[@]}" \
        --steps 150 --batch 32 --negatives 1 --lora-rank 8 --lora-alpha 16 --save-every 25 --eval-every 50 \
        --lr 1e-4 --adapter-dtype bfloat16 --sparse-temperature 1 ;;
    default-v2)  # a longer-trained default candidate: the shipped default trained 120 steps more (a further adapter)
                 # on another seeded sample of the same eight sources, with the later runs' recipe (16 queries x
                 # (1 + 3 BM25-mined negatives), sparse temperature 10); its fusion chosen on SciFact train as the
                 # shipped one's, written into its card (set_card_fusion), then a plain search on the three test sets
      tune "$RUNS/default-v2" --model smollm2-135m-hylex "${DEFAULT_DATA[@]}" --seed 1 \
        --steps 120 --batch 16 --negatives 3 --lora-rank 8 --lora-alpha 16 --save-every 20 --eval-every 60 \
        --lr 1e-4 --adapter-dtype bfloat16 --sparse-temperature 10
      bench default-v2 "$RUNS/default-v2" train "$SCIFACT"
      set_card_fusion "$RUNS/default-v2" default-v2 scifact
      bench default-v2 "$RUNS/default-v2" card "$SCIFACT" "$NFCORPUS" "$VASWANI" ;;
    default-v3)  # a third default candidate (benchmarks/README.md, rule written before it ran): the shipped default
                 # trained 40 steps more on a third seeded sample with 256-token passages; its card fusion chosen on
                 # SciFact + NFCorpus train (mean nDCG@10); tested only if it beats the shipped default on NFCorpus dev
      tune "$RUNS/default-v3" --model smollm2-135m-hylex "${DEFAULT_DATA[@]}" --seed 2 \
        --steps 40 --batch 16 --negatives 3 --lora-rank 8 --lora-alpha 16 --save-every 10 --eval-every 40 \
        --lr 1e-4 --adapter-dtype bfloat16 --sparse-temperature 10 --passage-tokens 256
      python3 benchmarks/default_gate.py --candidate "$RUNS/default-v3" --tag default-v3 \
        --shipped smollm2-135m-hylex --choose-on "$SCIFACT" "$NFCORPUS" --gate "$NFCORPUS" --dtype "$DTYPE" \
        --out benchmarks/results/default_gate.jsonl
      bench default-v3 "$RUNS/default-v3" card "$SCIFACT" "$NFCORPUS" "$VASWANI" ;;
    zero-shot)  # the untuned model, as a plain search uses it (card) and with weights chosen on train
      bench zero-shot smollm2-135m card "$SCIFACT" "$NFCORPUS" "$VASWANI"
      bench zero-shot smollm2-135m train "$SCIFACT" "$NFCORPUS" ;;
    evals)  # the shipped default on every set it never saw: as trained (its dev-chosen card fusion), with fusions
            # chosen on each set's train split, and as shipped (hylex/models/smollm2-135m-hylex: the same adapter,
            # its card fusion chosen on SciFact train; tuning.py reuses the runs/default-tuned indexes)
      bench default-tuned "$RUNS/default-tuned" card "$SCIFACT" "$NFCORPUS" "$VASWANI"
      bench default-tuned "$RUNS/default-tuned" train "$SCIFACT" "$NFCORPUS"
      bench smollm2-135m-hylex smollm2-135m-hylex card "$SCIFACT" "$NFCORPUS" "$VASWANI" ;;
    *) echo "unknown step $step (the steps are listed at the top of $0)" >&2; exit 2 ;;
  esac
done
