#!/usr/bin/env python3
"""Report to sweep from a Hugging Face `Trainer`: add `SweepReportCallback()` to its callbacks.

Each evaluation becomes one JSON line on stdout, which is how a program reports to sweep:

    {"step": 40, "epoch": 2.0, "eval_loss": 0.58, "eval_accuracy": 0.83}

Training logs (`loss`, `learning_rate`, `grad_norm`) become lines too, without the metric, so
sweep keeps them beside the curve; a saved checkpoint is reported as `{"checkpoint": PATH}`.
Name the metric in the sweep file as the Trainer names it (`eval_loss`, or `eval_` followed
by your `compute_metrics` key: `eval_accuracy`).

In your script:

    from hf_trainer_callback import SweepReportCallback
    trainer = Trainer(..., callbacks=[SweepReportCallback()])

With `report_to=[]` (or `"none"`) in TrainingArguments nothing else reports, and the run
works offline. Under sweep, SWEEP_TRIAL_DIR is the trial's folder: a good `output_dir`.

Running this file trains a tiny randomly initialised BERT on the bundled intent data
(data/clinc150-mini) for a demonstration; it needs `torch` and `transformers` and downloads
nothing. W&B's `--name=value` arguments: learning_rate, epochs, batch_size, seed.
"""

import json
import os
import sys

try:
    from transformers import TrainerCallback
except ImportError:  # the callback is usable (and importable) only with transformers

    class TrainerCallback:  # type: ignore[no-redef]
        """Stand-in so this module imports without transformers."""


def _number(value):
    """A number to report, else None. NaN and infinities are kept: Python's json writes them as
    NaN/Infinity, which sweep reads as a diverged value rather than a missing one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _print_line(values):
    sys.stdout.write(json.dumps(values) + "\n")
    sys.stdout.flush()


class SweepReportCallback(TrainerCallback):
    """Prints the Trainer's evaluations and logs as JSON lines for sweep (main process only)."""

    def _line(self, state, metrics):
        values = {"step": state.global_step}
        if state.epoch is not None:
            values["epoch"] = round(state.epoch, 4)
        for key, value in (metrics or {}).items():
            number = _number(value)
            if number is not None:
                values[key] = number
        return values

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Evaluations reach on_log too; on_evaluate prints them, once.
        if state.is_world_process_zero and logs and not any(k.startswith("eval_") for k in logs):
            _print_line(self._line(state, logs))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.is_world_process_zero:
            _print_line(self._line(state, metrics))

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            _print_line({"step": state.global_step, "checkpoint": path})


def _arguments(argv):
    """W&B's `--name=value` arguments for the demonstration."""
    config = {"learning_rate": 5e-4, "epochs": 3, "batch_size": 32, "seed": 0}
    for arg in argv:
        name, _, value = arg.lstrip("-").partition("=")
        if name in config:
            config[name] = type(config[name])(float(value)) if value else config[name]
        else:
            print(f"hf_trainer_callback: ignoring {arg}", file=sys.stderr)
    return config


def main(argv):
    try:
        import numpy as np
        import torch
        from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments
    except ImportError as e:
        print(f"hf_trainer_callback.py's demonstration needs torch and transformers: {e}", file=sys.stderr)
        return 2
    import inspect
    import tempfile

    config = _arguments(argv)
    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "data", "clinc150-mini")

    def read(name):
        with open(os.path.join(data, name), encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    train_rows, dev_rows = read("train.json"), read("dev.json")
    labels = {t: i for i, t in enumerate(sorted({r["tgt"] for r in train_rows}))}
    vocabulary = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2}
    for r in train_rows:
        for w in r["src"].lower().split():
            vocabulary.setdefault(w, len(vocabulary))

    class Rows(torch.utils.data.Dataset):
        def __init__(self, rows):
            self.rows = [r for r in rows if r["tgt"] in labels]

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            words = self.rows[i]["src"].lower().split()[:30]
            ids = [2] + [vocabulary.get(w, 1) for w in words]
            return {"input_ids": ids, "labels": labels[self.rows[i]["tgt"]]}

    def collate(items):
        width = max(len(x["input_ids"]) for x in items)
        ids = torch.tensor([x["input_ids"] + [0] * (width - len(x["input_ids"])) for x in items])
        return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": torch.tensor([x["labels"] for x in items])}

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    torch.manual_seed(int(config["seed"]))
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=len(vocabulary),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=64,
            num_labels=len(labels),
        )
    )
    output_dir = os.environ.get("SWEEP_TRIAL_DIR") or tempfile.mkdtemp(prefix="hf-demo-")
    # `eval_strategy` since transformers 4.41, `evaluation_strategy` before.
    strategy_key = "eval_strategy" if "eval_strategy" in inspect.signature(TrainingArguments).parameters else "evaluation_strategy"
    arguments = TrainingArguments(
        output_dir=os.path.join(output_dir, "hf"),
        learning_rate=float(config["learning_rate"]),
        num_train_epochs=int(config["epochs"]),
        per_device_train_batch_size=int(config["batch_size"]),
        per_device_eval_batch_size=64,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        seed=int(config["seed"]),
        disable_tqdm=True,
        **{strategy_key: "epoch"},
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=Rows(train_rows),
        eval_dataset=Rows(dev_rows),
        data_collator=collate,
        compute_metrics=accuracy,
        callbacks=[SweepReportCallback()],
    )
    trainer.train()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
