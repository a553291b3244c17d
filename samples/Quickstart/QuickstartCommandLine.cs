using System.CommandLine;

namespace BootMae.Samples.Quickstart;

/// <summary>The quickstart's command line: its options, help text and the settings they give.</summary>
public sealed class QuickstartCommandLine
{
    private readonly Option<int> _epochs = SampleCommandLine.Int("--epochs", $"Pretraining epochs (--quick: {QuickstartSettings.Quick.PretrainEpochs})", QuickstartSettings.Default.PretrainEpochs, 1, 10_000);
    private readonly Option<int> _fineTuneEpochs = SampleCommandLine.Int("--finetune-epochs", $"Fine-tuning epochs on the 1,000 labelled images (--quick: {QuickstartSettings.Quick.FineTuneEpochs})", QuickstartSettings.Default.FineTuneEpochs, 1, 10_000);
    private readonly Option<int> _fewLabelEpochs = SampleCommandLine.Int("--few-label-epochs", $"Fine-tuning epochs on the 100 labelled images (--quick: {QuickstartSettings.Quick.FewLabelFineTuneEpochs})", QuickstartSettings.Default.FewLabelFineTuneEpochs, 1, 10_000);
    private readonly Option<string> _output = SampleCommandLine.Text("--output", "DIR", $"Pictures, model, checkpoints and data (--quick: {QuickstartSettings.Quick.OutputDirectory})", QuickstartSettings.Default.OutputDirectory);
    private readonly Option<bool> _quick = SampleCommandLine.Flag("--quick", "A smoke run of about a minute on a small subset");
    private readonly Option<bool> _noProbe = SampleCommandLine.Flag("--no-probe", "Skip the linear-probe row");
    private readonly Option<bool> _finetuneAugment = SampleCommandLine.Flag("--finetune-augment", "Crop and flip the images while fine-tuning (off by default: it cost these short fine-tunes accuracy)");
    private readonly Option<bool> _resume = SampleCommandLine.Flag("--resume", "Continue pretraining from the checkpoint in DIR/checkpoints (left by a run stopped with Ctrl+C)");

    /// <summary>Builds the command.</summary>
    public QuickstartCommandLine()
    {
        Command = new RootCommand(
            "BootMAE quickstart: pretrain on 10,000 unlabelled Fashion-MNIST images, fine-tune with 1,000 and with 100 labels, " +
            "and compare with the same classifier trained from scratch for the same epochs and for the same total steps. " +
            "Run with: dotnet run -c Release --project samples/Quickstart [-- options]")
        {
            _epochs, _fineTuneEpochs, _fewLabelEpochs, _output, _quick, _noProbe, _finetuneAugment, _resume,
        };
    }

    /// <summary>The root command (no subcommands).</summary>
    public RootCommand Command { get; }

    /// <summary>The settings the parsed options describe.</summary>
    public QuickstartSettings Settings(ParseResult parse)
    {
        var settings = parse.GetValue(_quick) ? QuickstartSettings.Quick : QuickstartSettings.Default;
        return settings with
        {
            PretrainEpochs = SampleCommandLine.ValueOr(parse, _epochs, settings.PretrainEpochs),
            FineTuneEpochs = SampleCommandLine.ValueOr(parse, _fineTuneEpochs, settings.FineTuneEpochs),
            FewLabelFineTuneEpochs = SampleCommandLine.ValueOr(parse, _fewLabelEpochs, settings.FewLabelFineTuneEpochs),
            OutputDirectory = SampleCommandLine.ValueOr(parse, _output, settings.OutputDirectory),
            LinearProbe = !parse.GetValue(_noProbe),
            FineTuneAugment = parse.GetValue(_finetuneAugment),
            Resume = parse.GetValue(_resume),
        };
    }
}
