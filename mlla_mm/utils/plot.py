"""One line plot for the training curves (mlla_mm.mm.runner) and the benchmark plots (mlla_mm.benchmark)."""


def line_plot(path: str, series: dict, x_label: str, y_label: str, title: str = None, log: bool = False) -> list:
    """Write a PNG with one line per ``{label: [(x, y), ...]}`` entry (empty ones skipped, markers on short ones),
    log-log if ``log``; returns the labels drawn."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 5))
    drawn = [label for label, points in series.items() if points]
    for label in drawn:
        ax.plot(*zip(*series[label]), marker='o' if len(series[label]) < 30 else None, label=label)
    ax.set(xlabel=x_label, ylabel=y_label, xscale='log' if log else 'linear', yscale='log' if log else 'linear')
    ax.set_title(title or '', fontsize=8)
    ax.grid(True, which='both', alpha=0.3)
    if drawn:
        ax.legend(fontsize=7, ncol=1 + len(drawn) // 8)
    fig.savefig(path, dpi=120, bbox_inches='tight')
    plt.close(fig)
    return drawn
