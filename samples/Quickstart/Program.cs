using BootMae.Samples;
using BootMae.Samples.Quickstart;

const string usage = """
    BootMAE quickstart: pretrain on 10,000 unlabelled Fashion-MNIST images, fine-tune with 1,000 and with 100 labels,
    and compare with the same classifier trained from scratch for the same epochs and for the same total steps.

    Usage: dotnet run -c Release --project samples/Quickstart [-- options]
      --epochs N            pretraining epochs (default 5)
      --finetune-epochs N   fine-tuning epochs on the 1,000 labelled images (default 30)
      --output DIR          pictures, model and data (default out/quickstart)
      --quick               a smoke run of about a minute on a small subset
      --no-probe            skip the linear-probe row
      --help                this text
    """;

return SampleArguments.Run(args, usage, arguments =>
{
    var settings = arguments.Flag("quick") ? QuickstartSettings.Quick : QuickstartSettings.Default;
    settings = settings with
    {
        PretrainEpochs = arguments.Int("epochs", settings.PretrainEpochs, 1, 10_000),
        FineTuneEpochs = arguments.Int("finetune-epochs", settings.FineTuneEpochs, 1, 10_000),
        OutputDirectory = arguments.String("output", settings.OutputDirectory)!,
        LinearProbe = !arguments.Flag("no-probe"),
    };
    arguments.ThrowOnUnknown();
    QuickstartSample.Run(settings, Console.Out);
    return 0;
});
