"""Few-shot probes: fit a classical estimator on a handful of labelled chips and watch it approach full labels."""

from __future__ import annotations

import numpy as np
import streamlit as st

from core.diagnostics import calibration_table, confusion_table, constant_prediction
from core.probes import ESTIMATORS
from core.representations import external_names, normalise_drops
from core.search import space_name
from data.modalities import LABEL_TASKS, get_modality
from ui import cache, charts, maps, probing, rastermap, state
from ui.errors import UserError, page_guard

state.require_entrypoint("pages/probes.py")
ctx = state.context()
st.title("Few-shot probes")

with page_guard("few-shot probes"):
    if ctx.aoi is None:
        raise UserError("This workspace holds no AOI yet.", "Build the simulated AOIs on the Home page.", "info")
    model = cache.model_name(ctx.checkpoint)
    store = cache.store(ctx.root, ctx.aoi)
    emb = cache.embeddings(ctx.root, ctx.aoi, model)
    known = [t for t in LABEL_TASKS if np.isfinite(store.labels(t)).any()]
    if not known:
        raise UserError(f"{ctx.aoi} has no labels to probe.", "Add label rasters to it (`python -m data.ingest labels`) or pick another AOI.")

    # A reload, a shared link or a story step restores the settings from the URL.
    state.from_url("task", "probe_task", allowed=known)
    state.from_url("est", "probe_estimator", allowed=list(ESTIMATORS))
    state.from_url("reps", "probe_repeats", cast=lambda v: min(max(int(v), 1), 50))
    c1, c2, c3 = st.columns([2, 2, 1])
    task = c1.selectbox("Task (chip fraction)", known, key="probe_task")
    estimator = c2.selectbox("Estimator", list(ESTIMATORS), key="probe_estimator",
                             help="ridge / random forest / kNN regress the fraction; logistic classifies 'present' chips.")
    st.session_state.setdefault("probe_repeats", 5)
    repeats = c3.number_input("Repeats", min_value=1, max_value=50, step=1, key="probe_repeats",
                              help="Random draws of the labelled chips; the spread is their standard deviation.")
    n_labelled = int(np.isfinite(store.labels(task)).sum())
    options = probing.budget_options(n_labelled)
    state.from_url("budget", "probe_budget", allowed=[str(o) for o in options],
                   cast=lambda v: v if v == "all" else int(v))
    if st.session_state.get("probe_budget") not in options:  # first visit, or a task with fewer labels
        st.session_state["probe_budget"] = probing.default_budget(options)
    budget_label = st.select_slider("Label budget (labelled chips)", options=options, key="probe_budget", help="How many labelled chips the probe may learn from; 'all' = the whole pool.")
    budget = None if budget_label == "all" else int(budget_label)
    state.to_url(aoi=ctx.aoi, task=task, est=estimator, budget=budget_label, reps=int(repeats))

    externals = external_names(ctx.workspace, ctx.aoi)  # embeddings brought by the user (#17)
    rep = st.selectbox("Representation", ["fused", *externals], format_func=space_name, key="probe_rep",
                       help="The model's fused embeddings, or an external representation ingested with "
                            "`python -m data.ingest embeddings` (compared on the same split and baselines).")
    st.caption(f"Representation in use: {space_name(rep)}.")
    spec: dict = {"representation": rep}
    if rep == "fused":
        st.markdown("**Inputs the model sees** (uncheck one to simulate missing data)")
        mod_cols = st.columns(len(emb.modalities))
        dropped_modalities: list[str] = []
        dropped_channels: list[tuple[str, str]] = []
        channels = ctx.checkpoint and cache.model_card(ctx.checkpoint)["config"].get("channels", {}) or {}
        for col, mod in zip(mod_cols, emb.modalities):
            on = col.checkbox(get_modality(mod).title, value=True, key=f"probe_mod_{mod}")
            if not on:
                dropped_modalities.append(mod)
                continue
            for ch in channels.get(mod, []):
                if not col.checkbox(f"{mod} · {ch}", value=True, key=f"probe_ch_{mod}_{ch}"):
                    dropped_channels.append((mod, ch))
        dropped = normalise_drops(emb.modalities, channels, dropped_modalities, dropped_channels)
        spec.update(dropped_modalities=dropped[0], dropped_channels=dropped[1])
        probing.ensure_drop_embeddings(ctx, model, spec["dropped_channels"])
    probing.ensure_random_init(ctx, model)

    result = probing.probe(ctx, model, task=task, estimator=estimator, budget=budget, repeats=int(repeats), spec=spec)
    full = probing.probe(ctx, model, task=task, estimator=estimator, budget=None, repeats=1, spec=spec)
    probing.show_metrics(result, full, budget_label)

    # Logistic probes predict P(fraction > threshold), not the fraction: say so wherever predictions are shown.
    presence = result.get("presence_threshold") if estimator == "logistic" else None
    predicted = f"P({task} > {presence:g})" if presence is not None else f"predicted {task} fraction"
    pred_all = probing.all_predictions(result, len(store))
    n_train = int(result.get("n_train") or 0)
    flat = constant_prediction(pred_all)
    if flat is not None:
        shown = f"{flat.value:.0%}" if presence is not None else f"a {task} fraction of {flat.value:.0%}"
        st.warning(f"This model is degenerate: it predicts the same value ({shown}) for every chip, so the map below "
                   f"is one flat colour and its scores mean nothing. {n_train} labelled chips are too few for "
                   f"{estimator}" + (" (the labelled chips were all of one class)" if presence is not None else "")
                   + ": raise the label budget or choose another estimator.")
    elif len(result.get("notes", ())) > 0:
        # Some repeats drew labelled chips of one class only: their model is a constant, and it is in the averages.
        st.warning("Some random draws are degenerate (" + "; ".join(str(n) for n in result["notes"]) + "): their "
                   f"scores are part of the averages above. With {n_train} labelled chips, raise the label budget.")
    left, right = st.columns(2)
    with left:
        st.markdown("**Learning curve**")
        curves, metric = probing.curves(ctx, model, task, estimator, int(repeats), spec, n_labelled)
        st.altair_chart(charts.learning_curve_chart(curves, probing.headline(full)[1], metric, current_budget=n_train),
                        width="stretch")
        st.caption(f"Red line: your budget ({n_train:,} labelled chips). Bands: spread (± 1 std) over the repeats. "
                   "Dashed line: this setting with all labels. Random-init: the same network untrained; hand-crafted: "
                   "per-channel statistics. Test chips are whole squares of the area held out, as in the evaluation.")
    y_true, y_pred = probing.test_pairs(result, store.labels(task))
    with right:
        if presence is None:
            st.markdown("**Predicted vs true** (held-out chips, first random draw)")
            st.altair_chart(charts.predicted_vs_true_chart(y_true, y_pred, task, predicted_title=predicted),
                            width="stretch")
            st.caption("Each dot is a held-out chip; on the dashed line the prediction equals the truth.")
        else:
            # A presence probability is compared with presence, not with the fraction: calibration and confusion.
            truly = np.where(np.isfinite(y_true), (y_true > presence).astype(np.float64), np.nan)
            st.markdown(f"**Calibration of {predicted}** (held-out chips, first random draw)")
            st.altair_chart(charts.calibration_chart(calibration_table(y_pred, truly), task, presence), width="stretch")
            st.caption("Chips grouped by predicted probability: on the dashed line, a predicted 30 % is present 30 % "
                       "of the time. Dot size: chips in the group.")
            st.dataframe(confusion_table(y_pred, truly, 0.5), width="stretch")
            st.caption(f"Chips counted at P ≥ 0.5 (the threshold behind F1); present means {task} > {presence:g} of "
                       "the chip.")

    st.markdown(f"**{predicted[0].upper() + predicted[1:]} over the AOI** (first random draw)"
                + (" · simulated AOI" if store.meta.simulated else ""))
    show_error = st.toggle("Show the error (predicted - true) instead", key="probe_map_error",
                           help="For logistic: P(present) minus 1 where the chip's fraction is above the threshold, else 0.")
    grid = cache.grid(ctx.root, ctx.aoi)
    if show_error:
        truth = store.labels(task)
        if presence is not None:
            truth = np.where(np.isfinite(truth), (truth > presence).astype(np.float64), np.nan)
        err = pred_all - truth
        lim = float(np.nanmax(np.abs(err))) if np.isfinite(err).any() else 1.0
        lim = lim if lim > 0 else 1.0
        scale, values = maps.color_scale("prediction-error", -lim, lim, title="predicted − true"), err
        units = "probability − presence (0 or 1)" if presence is not None else "share of the chip"
        grey = "grey: no label or no prediction for the chip."
        note = "Blue: predicted too low; red: predicted too high; white: right."
    else:
        scale = maps.color_scale(task if task in LABEL_TASKS else "water", title=predicted)
        values = pred_all
        units = "probability" if presence is not None else "share of the chip"
        grey = "grey: no prediction (the chip lacks the inputs)."
        note = ""
    # A raster, one pixel per chip: the same cost at 150 K chips as at 2 K (see ui/rastermap.py).
    rastermap.score_map(grid, values, scale, units=units, key="probe_map", height=440)
    st.caption(" ".join(t for t in (grey[0].upper() + grey[1:], note) if t))
