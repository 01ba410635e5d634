"""DPO and IPO against trl's DPOTrainer on the same tiny model, the same token ids and the same
frozen reference: the losses and every parameter's gradient agree (trl 1.16; its loss is run
through DPOTrainer._compute_loss, so log-prob extraction and masking are compared too)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import llmkit
from llmkit.align.dpo import DPOObjective
from llmkit.align.prefs import builtin_preferences, collate_pairs, encode_pairs
from llmkit.data.instruct import IGNORE_INDEX
from tests.peers import peer

trl = peer("trl")
transformers = peer("transformers")
datasets = peer("datasets")


@pytest.fixture(scope="module")
def dirs(tiny_dirs, tmp_path_factory):
    """(reference dir, policy dir): the policy is the reference with perturbed weights, so that
    the log-ratios are not zero."""
    ref = tiny_dirs["tiny-llama"]
    llm = llmkit.load(ref)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in llm.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    policy = tmp_path_factory.mktemp("policy")
    llm.save(policy)
    return ref, policy


def trl_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our batch (inputs ids[:-1], labels labels[1:]) as trl's: whole sequences plus the mask of
    the completion tokens."""
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    first = ids[:, :1]
    full = torch.cat([first, torch.where(labels == IGNORE_INDEX, ids.roll(-1, 1), labels)], dim=1)
    full[:, 1:][labels == IGNORE_INDEX] = 0
    full[:, :-1] = torch.where(mask.bool(), ids, full[:, :-1])
    completion = torch.cat([torch.zeros_like(first), (labels != IGNORE_INDEX).long()], dim=1)
    attention = torch.cat([torch.ones_like(first), mask], dim=1)
    return {"input_ids": full, "attention_mask": attention, "completion_mask": completion}


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "rpo"])
def test_dpo_and_ipo_equal_trl(dirs, tmp_path, loss):
    """rpo: DPO plus the chosen answers' NLL (llmkit sft_weight=1; trl loss_type [sigmoid, sft])."""
    ref_dir, policy_dir = dirs
    llm = llmkit.load(policy_dir)
    pairs = builtin_preferences("dev", ["arith", "sorting"])[:6]
    examples, dropped = encode_pairs(llm.tokenizer, pairs, 128)
    assert dropped == 0 and len(examples) == 6
    batch = collate_pairs(examples, pad_id=0)

    # trl
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = transformers.AutoTokenizer.from_pretrained(policy_dir)
        hf = transformers.AutoModelForCausalLM.from_pretrained(policy_dir, attn_implementation="eager",
                                                               torch_dtype=torch.float32)
        hf_ref = transformers.AutoModelForCausalLM.from_pretrained(ref_dir, attn_implementation="eager",
                                                                   torch_dtype=torch.float32)
        ds = datasets.Dataset.from_dict({"prompt": ["x"], "chosen": ["a"], "rejected": ["b"]})
        args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), bf16=False, use_cpu=True, report_to=[],
                             gradient_checkpointing=False, beta=0.1,
                             loss_type=["sigmoid", "sft"] if loss == "rpo" else [loss],
                             loss_weights=[1.0, 1.0] if loss == "rpo" else None)
        trainer = trl.DPOTrainer(model=hf, ref_model=hf_ref, args=args, train_dataset=ds, processing_class=tok)
    model = trainer.model.train()
    for m in model.modules():  # no dropout either side
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    theirs = trainer._compute_loss(model, trl_inputs(batch), return_outputs=False)
    theirs.backward()

    # llmkit
    ours_model = llm.model.train()
    reference = copy.deepcopy(llmkit.load(ref_dir).model).eval()
    kind, sft = ("sigmoid", 1.0) if loss == "rpo" else (loss, 0.0)
    ours, metrics = DPOObjective(beta=0.1, loss=kind, reference=reference, sft_weight=sft).loss(ours_model, batch)
    ours.backward()

    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-6)
    assert abs(ours.item() - (25.0 if loss == "ipo" else 0.6931)) > 1e-3  # the policy is not the reference
    hf_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    our_grads = {n: p.grad for n, p in ours_model.named_parameters() if p.grad is not None}
    assert set(our_grads) <= set(hf_grads) and len(our_grads) >= 18
    for name, g in our_grads.items():  # fp32 sums in another order: equal to 1e-5 of each gradient's size
        h = hf_grads[name]
        assert h.norm() > 0 and ((g - h).norm() / h.norm()).item() < 1e-5, name
