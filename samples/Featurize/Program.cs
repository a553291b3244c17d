using BootMae.Samples;
using BootMae.Samples.Featurize;

const string usage = """
    BootMAE featurization: embed images with a pretrained encoder, train an ordinary ML.NET classifier on the
    embeddings, and find the images most like a query image (cosine similarity of embeddings).

    Usage: dotnet run -c Release --project samples/Featurize [-- options]
      --encoder PATH   a saved encoder (the quickstart writes out/quickstart/encoder.bootmae); default: pretrain briefly
      --epochs N       pretraining epochs when no --encoder is given (default 2)
      --queries N      query images for the similarity search (default 4)
      --output DIR     pictures (default out/featurize)
      --quick          a smoke run of under a minute on a small subset
      --help           this text
    """;

return SampleArguments.Run(args, usage, arguments =>
{
    var settings = arguments.Flag("quick") ? FeaturizeSettings.Quick : FeaturizeSettings.Default;
    var encoder = arguments.String("encoder");
    if (encoder is not null && !File.Exists(encoder))
    {
        throw new SampleUsageException($"--encoder: no file '{Path.GetFullPath(encoder)}'. Run the quickstart first (it writes out/quickstart/encoder.bootmae) or leave --encoder out to pretrain here.");
    }

    settings = settings with
    {
        EncoderPath = encoder,
        PretrainEpochs = arguments.Int("epochs", settings.PretrainEpochs, 1, 10_000),
        Queries = arguments.Int("queries", settings.Queries, 1, 10),
        OutputDirectory = arguments.String("output", settings.OutputDirectory)!,
    };
    arguments.ThrowOnUnknown();
    FeaturizeSample.Run(settings, Console.Out);
    return 0;
});
