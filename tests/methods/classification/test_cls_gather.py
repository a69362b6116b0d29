"""Cross-process rows (classification/gather.py): FreeMatch's and TEAR's memories under DDP."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from cls_helpers import NUM_CLASSES, dropout_cnn, make_tear

from semimed.methods.classification import FreeMatch
from semimed.methods.classification.gather import all_rows


def test_all_rows_is_the_identity_in_one_process():
    x = torch.rand(3, 2)
    assert all_rows(x) is x


def _worker(rank: int, world: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        probs = torch.rand(2 * world, NUM_CLASSES).softmax(dim=1)  # the global batch
        mine = probs.chunk(world)[rank]
        torch.manual_seed(0)
        fm = FreeMatch(dropout_cnn, FreeMatch.Params(momentum=0.5), NUM_CLASSES, 10)
        fm.update_thresholds(mine)
        tear = make_tear(da_length=2)
        tear._align(mine)
        logits = torch.zeros(2, NUM_CLASSES)
        tear._adapl(mine, logits, torch.tensor([2 * rank, 2 * rank + 1]))
        state = {"fm": fm.state_dict(), "tear": tear.state_dict()}
        state |= {"rows": all_rows(torch.tensor([[rank]])), "probs": probs}
        torch.save(state, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_memories_update_from_every_process(tmp_path):
    """Two gloo processes, each with half the batch: FreeMatch's EMAs, TEAR's alignment history
    and AdaPL memory equal one process's update on the whole batch, on both processes."""
    world = 2
    init = f"file://{tmp_path}/rendezvous"
    # spawn, not fork: forked after the suite has started torch threads, the children can hang
    mp.start_processes(
        _worker, args=(world, init, str(tmp_path)), nprocs=world, start_method="spawn"
    )
    results = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in range(world)]
    probs = results[0]["probs"]
    torch.manual_seed(0)
    one = FreeMatch(dropout_cnn, FreeMatch.Params(momentum=0.5), NUM_CLASSES, 10)
    one.update_thresholds(probs)
    tear = make_tear(da_length=2)
    tear._align(probs)
    tear._adapl(probs, torch.zeros(2 * world, NUM_CLASSES), torch.arange(2 * world))
    for r, res in enumerate(results):
        assert res["rows"].flatten().tolist() == [0, 1], r
        for name in ("tau", "p_model", "label_hist"):
            torch.testing.assert_close(res["fm"][name], getattr(one, name))
        for name in ("da_history", "adapl_memory", "adapl_seen"):
            torch.testing.assert_close(res["tear"][name], getattr(tear, name))
    assert tear.adapl_seen[: 2 * world].all() and not tear.adapl_seen[2 * world :].any()
