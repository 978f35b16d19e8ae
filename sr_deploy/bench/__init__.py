"""The NTIRE 2022 ESR timing method, its statistics, the budget verdict, and the benchmark report.

The challenge's harness (``test_demo.py``) put each input on the GPU, recorded CUDA events around the forward
call only, did no warm-up, and averaged the per-image times over the set with the first image counted. This
package reproduces that number (the "challenge mean") and puts beside it what a deployer also wants: the cold
first image on its own, warm statistics after a warm-up, the end-to-end time with copies, throughput, and the
PSNR of each backend's own output.

Timing itself happens inside the backends (`Backend.run_timed`): CUDA events on a GPU, ``perf_counter_ns``
on the CPU. Everything here is plain functions on numbers, paths and arrays, so it can be tested without a
clock; the only impure edges are `inputs.load_bench_images` (reads files), `run.run_bench` (runs backends),
`environment.collect_environment` (asks the machine) and `render.write_plot` (writes a file).

One module per stage, imported from where it lives:

- `inputs`: the images to time (folders, synthetic).
- `stats`: time statistics, the challenge mean, throughput, speed-up.
- `verdict`: the budget and its verdict.
- `rows`: which backend configurations to measure (each backend's descriptor contributes its rows).
- `measure`: timing one backend over the images, and the per-row results.
- `models`: the deploy and training-time models to time.
- `environment`: the machine a figure was taken on.
- `report`: the report and its JSON Schema.
- `run`: the settings and the run over every row.
- `render`: the one column model, the markdown summary and the plot.
"""
