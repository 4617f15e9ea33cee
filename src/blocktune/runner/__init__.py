"""Running the protocol: a seed's narrow context and the steps that act on it (:mod:`.seedrun`),
the finals (:mod:`.finals`), the cross-validated choice (:mod:`.crossval`), the whole run over
seeds (:mod:`.search`) and one fine-tune (:mod:`.finetune`)."""
