"""The LightningModule that trains an agent (`module`), and what it composes around the algorithms' updates:
speed switches (`speed`, `whole_update`, `subpixel`), acting (`policy`), devices and non-finite guards."""
