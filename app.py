"""EO few-shot explorer: the home page and the navigation. Run with `streamlit run app.py`.

The pages are declared here with st.navigation (no automatic discovery of pages/); the sidebar with
the workspace, AOI and checkpoint pickers is drawn here once and shared through st.session_state.
"""

from __future__ import annotations

import logging

import pandas as pd
import streamlit as st

from core import pipeline
from data.workspace import Workspace
from ui import cache, state, stories
from ui.errors import page_guard
from ui.text import md_escape

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

# While a story plays, the page is full-screen: wide layout and the sidebar collapsed.
st.set_page_config(page_title="EO few-shot explorer", page_icon=":material/satellite_alt:", layout="wide",
                   initial_sidebar_state="collapsed" if stories.playing() else "auto")


def home() -> None:
    """Home: which data are simulated or real, where to start, the AOIs, the model card and the pipeline."""
    ctx = state.context()
    st.title("Few-shot Earth observation with multimodal embeddings")
    with page_guard("home: data"):
        _data_kinds(ctx)
    st.markdown("Find similar terrain and map what you need from a few labelled chips, on embeddings of "
                "Sentinel-2 optical, Sentinel-1 radar and InSAR coherence (any of them may be missing).")
    with page_guard("home: start here"):
        _start_here(ctx)
    with page_guard("home: AOIs"):
        _aoi_table(ctx)
    with page_guard("home: model card"):
        _model_card(ctx)
    with page_guard("home: pipeline"):
        _pipeline(ctx)


def _data_kinds(ctx: state.AppContext) -> None:
    """First thing on the page: which AOIs (and which model training data) are simulated and which are real."""
    rows = [cache.aoi_summary(ctx.root, a) for a in ctx.aois]
    by_kind = {k: [r["aoi"] for r in rows if r["kind"] == k] for k in ("simulated", "real", "unknown")}
    parts = []
    if by_kind["simulated"]:
        parts.append(f"**Simulated:** {', '.join(md_escape(a) for a in by_kind['simulated'])} (generated at real "
                     "coordinates by the simulator; not satellite observations).")
    if by_kind["real"]:
        parts.append(f"**Real:** {', '.join(md_escape(a) for a in by_kind['real'])} (ingested Sentinel data).")
    if by_kind["unknown"]:
        parts.append(f"**Unknown origin:** {', '.join(md_escape(a) for a in by_kind['unknown'])} (its description "
                     "cannot be read, so it is called neither simulated nor real).")
    if ctx.checkpoint is not None:
        meta = cache.model_card(ctx.checkpoint)["meta"]
        data = meta.get("training_data") or {}
        trained_sim = bool(meta.get("simulated_training_data", str(data.get("source", "")).startswith("simulated")))
        parts.append("**Model:** trained on simulated chips only." if trained_sim
                     else "**Model:** trained on the data listed in the model card below.")
    if not rows:
        parts.insert(0, "No area of interest yet: build the simulated demo areas under *Pipeline* below.")
    box = st.warning if by_kind["simulated"] else st.info
    box("  \n".join(parts), icon=":material/science:" if by_kind["simulated"] else ":material/satellite_alt:")


def _start_here(ctx: state.AppContext) -> None:
    """One path through the app for a first-time user, each step a link to its page."""
    st.subheader("Start here")
    if not ctx.aois:
        st.markdown("First build the workspace: press **Build missing steps** under *Pipeline* below.")
    aoi = cache.aoi_label(ctx.root, ctx.aoi) if ctx.aoi else "none yet"
    st.markdown(f"1. **Pick an area** in the sidebar (now: {md_escape(aoi)}).")
    steps = (
        ("pages/similarity.py", "2. **Click a chip** on the map: every chip is coloured by how alike it looks."),
        ("pages/mapping.py", "3. **Label a few chips** present or absent: the map is retrained on each click."),
        ("pages/probes.py", "4. **Watch the learning curve**: the score as labels grow, against all labels."),
        ("pages/story.py", "5. **Tell the story**: save each view from the sidebar, then play them back."),
    )
    for page, text in steps:
        left, right = st.columns([5, 2], vertical_alignment="center")
        left.markdown(text)
        right.page_link(state.page_target(page), label=f"Open {state.PAGE_TITLES[page]}",
                        icon=":material/arrow_forward:")
    st.caption("The embedding explorer shows the same chips laid out by how the model sees them.")


def _aoi_table(ctx: state.AppContext) -> None:
    st.subheader("Areas of interest")
    if not ctx.aois:
        st.info(
            f"The workspace `{ctx.workspace.root}` holds no AOI yet. Build the simulated AOIs with the button below "
            "(or `python -m data.simulate`), or ingest your own data with `python -m data.ingest`."
        )
        return
    rows = [cache.aoi_summary(ctx.root, a) for a in ctx.aois]
    table = pd.DataFrame(rows)
    table = table[["aoi", "title", "kind"] + [c for c in table.columns if c not in ("aoi", "title", "kind", "simulated")]]
    st.dataframe(table, hide_index=True, width="stretch")
    if any(r["simulated"] for r in rows):
        st.caption("Simulated AOIs are procedurally generated at real coordinates; they are not observations.")


def _model_card(ctx: state.AppContext) -> None:
    st.subheader("Model")
    if ctx.checkpoint is None:
        st.info(
            "No model checkpoint found. The shipped one lives in `checkpoints/tiny-sim`; train your own with "
            "`python -m training.pretrain` (see README)."
        )
        return
    card = cache.model_card(ctx.checkpoint)
    cfg, meta = card["config"], card["meta"]
    data = meta.get("training_data") or {}
    simulated = bool(meta.get("simulated_training_data", data.get("source", "").startswith("simulated") or data.get("simulated") is True))
    c1, c2, c3 = st.columns(3)
    c1.metric("Parameters", f"{int(meta['params']):,}" if "params" in meta else "n/a")
    c2.metric("Embedding dim", cfg.get("embed_dim", "n/a"))
    c3.metric("Chip size", f"{cfg.get('chip_size', '?')} px / patch {cfg.get('patch_size', '?')}")
    # Every field below comes from the checkpoint's files: escaped so that Markdown/HTML in them shows as text.
    towers = ", ".join(f"{md_escape(m)} ({', '.join(md_escape(c) for c in ch)})"
                       for m, ch in (cfg.get("channels") or {}).items())
    st.markdown(
        f"**{md_escape(cfg.get('name', ctx.checkpoint.name))}**: one ViT tower per modality (width "
        f"{md_escape(cfg.get('width'))}, depth {md_escape(cfg.get('depth'))}, {md_escape(cfg.get('heads'))} heads) over "
        f"{towers}; the fused embedding is the normalised mean of the modalities present."
    )
    if data:
        aois = ", ".join(md_escape(a) for a in data.get("aois", [])) or "n/a"
        seeds = ", ".join(md_escape(s) for s in data.get("seeds", [])) or "n/a"
        kind = "SIMULATED" if simulated else "real"
        st.markdown(
            f"Training data ({kind}): {md_escape(data.get('source', 'n/a'))}; AOIs {aois}; seeds {seeds}"
            + (f"; {int(data['train_chips']):,} training chips" if "train_chips" in data else "")
            + (f"; {meta['step']:,} steps" if isinstance(meta.get("step"), int) else "")
            + "."
        )
    retrieval = _retrieval_rows(meta)
    if retrieval:
        st.caption("Cross-modal retrieval on held-out chips (top-1: the right chip is the nearest of all held-out chips)")
        st.dataframe(pd.DataFrame(retrieval), hide_index=True, width="content")
    else:
        st.caption("This checkpoint carries no held-out retrieval score.")


def _retrieval_rows(meta: dict) -> list[dict]:
    """Retrieval top-1 vs chance from a checkpoint's meta (training writes 'heldout_retrieval')."""
    rows = []
    held = meta.get("heldout_retrieval")
    if isinstance(held, dict):
        for pair, v in held.items():
            if isinstance(v, dict) and "top1" in v:
                rows.append({"pair": pair, "top-1": float(v["top1"]), "chance": float(v.get("chance", float("nan"))),
                             "held-out chips": v.get("n")})
    metrics = meta.get("metrics")
    if not rows and isinstance(metrics, dict) and "retrieval_top1" in metrics:
        rows.append({"pair": "all pairs", "top-1": float(metrics["retrieval_top1"]),
                     "chance": float(metrics.get("retrieval_chance", float("nan"))), "held-out chips": None})
    return rows


def _pipeline(ctx: state.AppContext) -> None:
    st.subheader("Pipeline")
    # A workspace with stores is about those stores (real ones included); an empty one gets the demo AOIs.
    aois = ctx.aois or None
    steps = list(pipeline.STEPS) if ctx.checkpoint is not None else ["store"]
    if ctx.checkpoint is None:
        st.caption("Without a checkpoint only the stores can be built.")
    build_steps = [s for s in steps if s in pipeline.DEFAULT_STEPS]
    table = cache.pipeline_status(ctx.root, aois, ctx.checkpoint, steps)
    todo = table[(table["state"] != "built") & table["step"].isin(build_steps)]
    label = f"Build missing steps ({len(todo)})" if len(todo) else "Everything is built"
    if st.button(label, key="home_build", type="primary", disabled=todo.empty,
                 help="Generates missing simulated AOIs, embeds with the chosen checkpoint and builds the search indexes."):
        _build(ctx, aois, build_steps)
        if not ctx.aois:
            st.rerun()  # new stores: redraw the sidebar's AOI picker
        table = cache.pipeline_status(ctx.root, aois, ctx.checkpoint, steps)
    # Below the start path and folded while everything is built: it is a status, not where a user begins.
    with st.expander("Status of each step" + (f" ({len(todo)} missing)" if len(todo) else ": all built"),
                     expanded=not todo.empty):
        wide = table.pivot(index="aoi", columns="step", values="state").reindex(columns=steps)
        icons = {"built": "✅ built", "missing": "⬜ missing", "stale": "🔄 stale", "damaged": "❌ damaged"}
        st.dataframe(wide.map(lambda v: icons.get(v, v)), width="stretch")
        st.dataframe(table, hide_index=True, width="stretch")
        st.caption("Random-init is the same network untrained: the baseline the probes compare against. "
                   "From a terminal: `python -m core.pipeline status` and `python -m core.pipeline build`.")


def _build(ctx: state.AppContext, aois: list[str] | None, steps: list[str]) -> None:
    """Run core.pipeline.build with a live progress bar; errors end up in page_guard's message."""
    with st.status("Building the missing steps…", expanded=True) as box:
        bar = st.progress(0.0, text="starting")

        def report(fraction: float, message: str) -> None:
            bar.progress(fraction, text=message)

        try:
            actions = pipeline.build(ctx.workspace, aois, steps, progress_cb=report,
                                     checkpoint=ctx.checkpoint or pipeline.SHIPPED_CHECKPOINT, progress=False)
        except Exception:
            box.update(label="The build stopped; see the message below.", state="error")
            raise
        bar.progress(1.0, text="done")
        if actions.empty:
            box.update(label="Nothing to build: the workspace is up to date.", state="complete")
        else:
            st.dataframe(actions, hide_index=True)
            box.update(label=f"Built {len(actions)} step(s).", state="complete", expanded=False)


pages = {file: st.Page(home if file == state.HOME else file, title=title, icon=icon, default=file == state.HOME)
         for file, title, icon in state.PAGES}
navigation = st.navigation(list(pages.values()))
state.register_pages(pages, navigation)
state.mark_entrypoint()
state.follow_deep_link()
with page_guard("sidebar"):
    state.render_sidebar()
    stories.save_view_control(Workspace())
with page_guard("story player"):
    stories.player_bar(Workspace())
navigation.run()
