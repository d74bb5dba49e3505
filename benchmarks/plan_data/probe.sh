set -x
python3 -m qvl.cli tiny-model /tmp/m3 --like Qwen2.5-VL-3B
python3 -c "from qvl.sample import write_sample_data; write_sample_data('/tmp/d', n=24, seed=0, min_side=1344, max_side=1344, progress=False)"
cat > /tmp/run.yaml <<EOT
model: /tmp/m3
data: /tmp/d/train.json
method: lora
batch_size: 8
cutoff_len: 8192
steps: 6
log_every: 1
save_every: 0
out_dir: /tmp/out
report_to: none
EOT
date +%T
TORCH_LOGS=recompiles timeout 290 python3 -m qvl.cli train /tmp/run.yaml --plan 24 > $OUT/train24.log 2>&1
echo rc $?; date +%T
cp /tmp/out/log.jsonl /tmp/out/summary.json $OUT/ 2>/dev/null
grep -v "Warning\|warnings.warn\|Loading weights" $OUT/train24.log | tail -60
