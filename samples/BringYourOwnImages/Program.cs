using BootMae.Samples;
using BootMae.Samples.BringYourOwnImages;

const string usage = """
    BootMAE on your own images: pretrain on unlabelled images or fine-tune a classifier on images sorted into one
    sub-folder per class, save the model, and predict new files.

    Usage: dotnet run -c Release --project samples/BringYourOwnImages -- --images DIR [options]
      --images DIR        image folder: DIR/<class>/*.png for fine-tuning; any images under DIR for pretraining
      --mode M            finetune (default) or pretrain
      --unlabeled         the folder's sub-folders are not classes (pretraining only)
      --preset P          network: small28 (default), tiny28, small32, vit-tiny16, vit-small16, vit-base16
      --epochs N          training epochs (default 10)
      --batch N           images per step (default 32)
      --encoder PATH      fine-tune from this pretrained encoder (written by --mode pretrain) instead of a random start
      --model OUT.zip     where to save the model (default out/byoi/model.zip; the encoder goes next to it)
      --predict FILE...   classify these files after training, or with --model alone, without training
      --make-example DIR  write Fashion-MNIST as DIR/train/<class>/*.png and DIR/new/*.png to try the commands on
      --help              this text
    Image files: .png .jpg .jpeg .bmp .gif .webp (any size; resized to the preset's size).
    """;

return SampleArguments.Run(args, usage, arguments =>
{
    var makeExample = arguments.String("make-example");
    var images = arguments.String("images");
    var model = arguments.String("model", Path.Combine("out", "byoi", "model.zip"))!;
    var encoder = arguments.String("encoder");
    var settings = new ByoiSettings
    {
        ImageDirectory = images,
        Mode = arguments.Choice("mode", "finetune", "finetune", "pretrain"),
        Unlabeled = arguments.Flag("unlabeled"),
        Architecture = SampleArchitectures.FromName(arguments.String("preset", "small28")!),
        Epochs = arguments.Int("epochs", 10, 1, 100_000),
        BatchSize = arguments.Int("batch", 32, 1, 4096),
        EncoderPath = encoder,
        ModelPath = model,
        Predict = arguments.Strings("predict"),
    };
    arguments.ThrowOnUnknown();
    if (makeExample is not null)
    {
        ByoiSample.MakeExample(makeExample, trainPerClass: 100, Console.Out);
        return 0;
    }

    ByoiSample.Run(settings, Console.Out);
    return 0;
});
