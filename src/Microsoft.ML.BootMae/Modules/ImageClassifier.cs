using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Modules;

// The fine-tuning network (spec §6): the pretrained ViT with its fixed sin-cos PE and the cls token kept in the
// sequence, the final LN replaced by identity, features = mean of the patch tokens of block SourceBlock (cls excluded),
// then the head. The encoder's own `norm` stays in the state_dict (so ExtractEncoder round-trips) but is unused.
internal sealed class ImageClassifier : nn.Module<Tensor, Tensor>
{
    private readonly VisionTransformerEncoder encoder;
    private readonly ClassificationHead classifier;

    public ImageClassifier(VisionTransformerEncoder encoder, int numClasses, bool linearProbe, int sourceBlock) : base(nameof(ImageClassifier))
    {
        this.encoder = encoder;
        classifier = new ClassificationHead(encoder.Architecture.EmbedDim, numClasses, linearProbe);
        SourceBlock = sourceBlock;
        NumberOfClasses = numClasses;
        RegisterComponents();
    }

    public VisionTransformerEncoder Encoder => encoder;

    public ClassificationHead Head => classifier;

    public int SourceBlock { get; }

    public int NumberOfClasses { get; }

    public bool IsLinearProbe => classifier.IsLinearProbe;

    // images B×C×H×W in [-1, 1] → logits B×K.
    public override Tensor forward(Tensor images) => classifier.forward(Features(images));

    // Mean of the patch tokens, cls excluded: B×D. The frozen probe encoder runs without autograd.
    public Tensor Features(Tensor images)
    {
        if (IsLinearProbe && is_grad_enabled())
        {
            using var _ = no_grad();
            return Pool(encoder.ForwardRaw(images, SourceBlock));
        }

        return Pool(encoder.ForwardRaw(images, SourceBlock));
    }

    private static Tensor Pool(Tensor tokens) => tokens[.., 1..].mean(new long[] { 1 });
}
